/* cgroup/sendmsg4 + sendmsg6: a pod's unconnected UDP DNS query goes to its DNS proxy
 * (docs/design.md §6, DNS).
 *
 * Linked at the cgroup-v2 root, so it runs for every sendto()/sendmsg() with an address on a UDP
 * socket of the machine (connected sockets go through connect4/6 instead): the port test comes
 * first, before any map lookup. In a ZT_POD_DNS pod, a datagram to port 53 is sent to
 * 127.0.0.1:15053 (sendmsg4) or [::1]:15053 (sendmsg6) instead, and the server it was meant for
 * is kept in the socket's zt_orig_dns slot of that proxy address; recvmsg4/6 shows the replies as
 * coming from it. Left alone, as by connect4/6: zt's marked sockets (its own sockets inside a pod;
 * the proxy's upstream queries leave from zt's namespace, which no pod capture covers) and port 53
 * on loopback or the pod's own IPs (a DNS server inside the pod).
 *
 * An IPv4-mapped destination on a dual-stack socket never reaches sendmsg6: udpv6_sendmsg() hands
 * it to udp_sendmsg(), which runs sendmsg4 with the IPv4 address (Linux 5.10 to 6.18 alike), so
 * sendmsg4 serves both and the reply reaches recvmsg6 from ::ffff:127.0.0.1.
 * Return 1 = send (rewritten or not); 0 = EPERM, when the server cannot be remembered: the reply
 * would come from the wrong source and be dropped by the resolver, so fail at once instead.
 */
#include "zt_capture.h"

/* orig: the server; returns the verdict after counting. */
static __always_inline int zt_dns_send(struct bpf_sock_addr *ctx, struct zt_addr *orig, int local,
                                       int via6)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk && zt_own_mark(sk->mark)) {
        zt_count(ZT_C_DNS_SKIP_MARK);
        return 0;
    }
    if (local) {
        zt_count(ZT_C_DNS_SKIP_LOCAL);
        return 0;
    }
    if (!zt_dns_remember_udp(sk, orig, via6)) {
        zt_count(ZT_C_DNS_MAP_ERROR);
        return -1;
    }
    zt_count(via6 ? ZT_C_DNS_REDIRECT_UDP6 : ZT_C_DNS_REDIRECT_UDP4);
    return 1;
}

int zt_sendmsg4(struct bpf_sock_addr *ctx)
{
    struct zt_pod *pod = zt_dns_pod(ctx);
    if (!pod)
        return 1;
    __u32 dst = ctx->user_ip4;
    struct zt_addr orig = {};
    zt_map4(&orig, dst);
    orig.port = (__u16)ctx->user_port;
    orig.family = AF_INET;
    int local = zt_is_loop4(dst) || dst == pod->ip4 || dst == 0;
    int verdict = zt_dns_send(ctx, &orig, local, 0);
    if (verdict < 0)
        return 0;
    if (verdict) {
        ctx->user_ip4 = ZT_DNS_PROXY4;
        ctx->user_port = bpf_htons(ZT_PORT_DNS_PROXY);
    }
    return 1;
}

int zt_sendmsg6(struct bpf_sock_addr *ctx)
{
    struct zt_pod *pod = zt_dns_pod(ctx);
    if (!pod)
        return 1;
    __u32 d[4] = {ZT_LD32(ctx->user_ip6[0]), ZT_LD32(ctx->user_ip6[1]),
                  ZT_LD32(ctx->user_ip6[2]), ZT_LD32(ctx->user_ip6[3])};
    if (zt_is_mapped(d)) /* not reached (see above); sendmsg4 owns IPv4 servers */
        return 1;
    struct zt_addr orig = {};
    __builtin_memcpy(orig.ip, d, 16);
    orig.port = (__u16)ctx->user_port;
    orig.family = AF_INET6;
    int local = zt_is_loop6(d) || zt_is_own6(pod, d);
    int verdict = zt_dns_send(ctx, &orig, local, 1);
    if (verdict < 0)
        return 0;
    if (verdict) {
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
        ctx->user_port = bpf_htons(ZT_PORT_DNS_PROXY);
    }
    return 1;
}
