/* cgroup/connect4 + connect6: outbound capture, default mode, and DNS capture of connects
 * (docs/design.md §6).
 *
 * Linked once at the cgroup-v2 root, so it runs for every connect() on the machine: it must leave
 * alone everything that is not an enrolled pod (netns cookie not in zt_pods). In an enrolled pod:
 *   - DNS first (ZT_POD_DNS pods, TCP or UDP to port 53, both outbound modes): rewritten to the
 *     pod's DNS proxy on loopback, 127.0.0.1:15053 or [::1]:15053 (::ffff:127.0.0.1 for an
 *     IPv4-mapped server); the original server is kept in zt_orig_app (kind ZT_ORIG_DNS:
 *     getpeername4/6 shows it, sockops leaves it alone) and, for UDP, in zt_orig_dns (recvmsg4/6
 *     shows replies as coming from it: glibc, musl and dig drop replies from another source).
 *     Left alone as by connect below: zt's marked sockets (its own sockets inside a pod) and
 *     port 53 on loopback or the pod's own IPs (a DNS server inside the pod).
 *   - TCP otherwise: loopback, the pod's own IPs and zt's marked sockets (zt_own_mark) are left
 *     alone; other TCP connects are rewritten to <pod ip>:15001 and the original destination is stored in the
 *     socket's own storage (zt_orig_app; sockops re-keys it by the app's (ip, port) once the source
 *     port is known).
 * A socket may connect() again after a failed attempt: every attempt overwrites or forgets what an
 * earlier one stored, so getpeername and sockops never see a stale destination.
 * Return 1 = let connect() proceed (rewritten or not). The one exception: when the original
 * destination cannot be stored, return 0 (connect() fails with EPERM) - fail closed, because
 * letting the connection through unrewritten would bypass the proxy.
 */
#include "zt_capture.h"

#define ZT_SOCK_DGRAM 2 /* SOCK_DGRAM; asm/socket.h is not reachable from BPF */

/* Store the original destination in the socket's storage; 0 when there is no memory for it. */
static __always_inline int zt_remember(struct bpf_sock_addr *ctx, struct zt_addr *orig)
{
    struct bpf_sock *sk = ctx->sk;
    struct zt_addr *stored =
        sk ? zt_orig_app.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;
    if (!stored)
        return 0;
    *stored = *orig; /* F_CREATE alone would keep the value of an earlier connect() */
    return 1;
}

/* An enrolled pod's connect left alone: forget what an earlier connect() stored. */
static __always_inline int zt_leave(struct bpf_sock_addr *ctx, __u32 why)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk)
        zt_orig_app.sk_storage_delete(sk);
    zt_count(why);
    return 1;
}

static __always_inline int zt_marked(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    return sk && zt_own_mark(sk->mark);
}

/* The enrolled pod whose TCP connect this is, or NULL to leave it alone: not an enrolled netns, not
 * TCP, a pod whose outbound goes through sk_lookup, or one of zt's own (marked) sockets. */
static __always_inline struct zt_pod *zt_capturing_pod(struct bpf_sock_addr *ctx)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct zt_pod *pod = zt_pods.lookup(&netns);
    if (!pod)
        return NULL;
    if (ctx->type != ZT_SOCK_STREAM) {
        /* a UDP socket that connected to a DNS server before and now connects elsewhere: its
         * getpeername must not show that server any more */
        struct bpf_sock *sk = ctx->sk;
        if (sk && (pod->flags & ZT_POD_DNS))
            zt_orig_app.sk_storage_delete(sk);
        return NULL;
    }
    if (pod->flags & ZT_POD_OUT_SKLOOKUP) {
        /* not captured here, but a DNS connect of this socket may have stored a server before
         * (e.g. refused while the proxy restarted): every attempt overwrites or forgets */
        struct bpf_sock *sk = ctx->sk;
        if (sk && (pod->flags & ZT_POD_DNS))
            zt_orig_app.sk_storage_delete(sk);
        return NULL;
    }
    if (zt_marked(ctx)) {
        zt_leave(ctx, ZT_C_CONNECT_SKIP_MARK);
        return NULL;
    }
    return pod;
}

/* DNS: the connect of a ZT_POD_DNS pod to port 53, or 0 when this is not one (then the TCP rules
 * apply). orig holds the server; local: it is loopback or the pod's own address. Returns 1 when
 * handled with connect() allowed (the caller rewrites the destination when *redirect), -1 for
 * EPERM. */
static __always_inline int zt_connect_dns(struct bpf_sock_addr *ctx, struct zt_addr *orig,
                                          int local, int via6, int *redirect)
{
    int udp = ctx->type == ZT_SOCK_DGRAM;
    if (!udp && ctx->type != ZT_SOCK_STREAM)
        return 0;
    if (zt_marked(ctx))
        return zt_leave(ctx, ZT_C_DNS_SKIP_MARK);
    if (local)
        return zt_leave(ctx, ZT_C_DNS_SKIP_LOCAL);
    orig->kind = ZT_ORIG_DNS;
    if (!zt_remember(ctx, orig) || (udp && !zt_dns_remember_udp(ctx->sk, orig, via6))) {
        zt_count(ZT_C_DNS_MAP_ERROR);
        return -1;
    }
    __u32 which = orig->family == AF_INET ? (udp ? ZT_C_DNS_REDIRECT_UDP4 : ZT_C_DNS_REDIRECT_TCP4)
                                          : (udp ? ZT_C_DNS_REDIRECT_UDP6 : ZT_C_DNS_REDIRECT_TCP6);
    zt_count(which);
    *redirect = 1;
    return 1;
}

int zt_connect4(struct bpf_sock_addr *ctx)
{
    __u32 dst = ctx->user_ip4;
    struct zt_pod *dns = zt_dns_pod(ctx);
    if (dns) {
        struct zt_addr orig = {};
        zt_map4(&orig, dst);
        orig.port = (__u16)ctx->user_port;
        orig.family = AF_INET;
        int local = zt_is_loop4(dst) || dst == dns->ip4 || dst == 0;
        int redirect = 0;
        int done = zt_connect_dns(ctx, &orig, local, 0, &redirect);
        if (done < 0)
            return 0;
        if (done) {
            if (redirect) {
                ctx->user_ip4 = ZT_DNS_PROXY4;
                ctx->user_port = bpf_htons(ZT_PORT_DNS_PROXY);
            }
            return 1;
        }
    }
    struct zt_pod *pod = zt_capturing_pod(ctx);
    if (!pod)
        return 1;
    if (zt_is_loop4(dst) || dst == pod->ip4 || dst == 0)
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_LOCAL);
    if (!(pod->flags & ZT_POD_HAS_IP4))
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_NOIP);
    struct zt_addr orig = {};
    zt_map4(&orig, dst);
    orig.port = (__u16)ctx->user_port;
    orig.family = AF_INET;
    if (!zt_remember(ctx, &orig)) {
        zt_count(ZT_C_CONNECT_MAP_ERROR);
        return 0;
    }
    zt_count(ZT_C_CONNECT_REDIRECT);
    ctx->user_ip4 = pod->ip4;
    ctx->user_port = bpf_htons(ZT_PORT_OUTBOUND);
    return 1;
}

int zt_connect6(struct bpf_sock_addr *ctx)
{
    __u32 d[4] = {ZT_LD32(ctx->user_ip6[0]), ZT_LD32(ctx->user_ip6[1]),
                  ZT_LD32(ctx->user_ip6[2]), ZT_LD32(ctx->user_ip6[3])};
    int mapped = zt_is_mapped(d);
    struct zt_pod *dns = zt_dns_pod(ctx);
    if (dns) {
        struct zt_addr orig = {};
        __builtin_memcpy(orig.ip, d, 16);
        orig.port = (__u16)ctx->user_port;
        orig.family = mapped ? AF_INET : AF_INET6;
        int local = zt_is_loop6(d) || zt_is_own6(dns, d);
        int redirect = 0;
        int done = zt_connect_dns(ctx, &orig, local, !mapped, &redirect);
        if (done < 0)
            return 0;
        if (done) {
            if (redirect) {
                /* an IPv4-mapped server stays IPv4 on the wire: ::ffff:127.0.0.1, else ::1 */
                ctx->user_ip6[0] = 0;
                ctx->user_ip6[1] = 0;
                ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
                ctx->user_ip6[3] = mapped ? ZT_DNS_PROXY4 : bpf_htonl(1);
                ctx->user_port = bpf_htons(ZT_PORT_DNS_PROXY);
            }
            return 1;
        }
    }
    struct zt_pod *pod = zt_capturing_pod(ctx);
    if (!pod)
        return 1;
    if (zt_is_loop6(d) || zt_is_own6(pod, d))
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_LOCAL);
    if (!(pod->flags & (mapped ? ZT_POD_HAS_IP4 : ZT_POD_HAS_IP6)))
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_NOIP);
    struct zt_addr orig = {};
    __builtin_memcpy(orig.ip, d, 16);
    orig.port = (__u16)ctx->user_port;
    orig.family = mapped ? AF_INET : AF_INET6;
    if (!zt_remember(ctx, &orig)) {
        zt_count(ZT_C_CONNECT_MAP_ERROR);
        return 0;
    }
    zt_count(ZT_C_CONNECT_REDIRECT);
    if (mapped) {
        /* stay IPv4 on the wire: ::ffff:<pod ip4> */
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
        ctx->user_ip6[3] = pod->ip4;
    } else {
        ctx->user_ip6[0] = pod->ip6[0];
        ctx->user_ip6[1] = pod->ip6[1];
        ctx->user_ip6[2] = pod->ip6[2];
        ctx->user_ip6[3] = pod->ip6[3];
    }
    ctx->user_port = bpf_htons(ZT_PORT_OUTBOUND);
    return 1;
}
