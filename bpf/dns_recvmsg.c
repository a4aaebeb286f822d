/* cgroup/recvmsg4 + recvmsg6: a reply from the DNS proxy is shown as coming from the server the
 * app asked (docs/design.md §6, DNS). Resolvers that check the source of what recvfrom() returns
 * drop a reply from any other address: musl (one unconnected socket for all its nameservers),
 * c-ares and Android's resolver (also on connected sockets), dig on unconnected ones. glibc 2.36
 * and dig 9.18 on their connected sockets leave the check to the kernel's connected-socket lookup,
 * which matches the proxy's address (connect4/6 rewrote the peer), and read the original through
 * getpeername4/6 where they ask.
 *
 * Linked at the cgroup-v2 root, so it runs for every recvfrom()/recvmsg() with an address buffer
 * on a UDP socket of the machine: the source test (the proxy's 127.0.0.1:15053, [::1]:15053 or
 * [::ffff:127.0.0.1]:15053) comes first, then the socket's zt_orig_dns slot for that address,
 * which only sockets of ZT_POD_DNS pods that sent a DNS query have. Without a payload in a
 * sock_addr context (no packet access), one socket with queries to two servers in flight through
 * the same proxy address sees both replies from the server it addressed last; glibc uses one
 * socket per server, musl one for all but accepts a reply from any of its servers, so both
 * accept it. The verifier allows recvmsg programs only to return 1.
 */
#include "zt_capture.h"

static __always_inline struct zt_dns_orig *zt_dns_sent(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    return sk ? zt_orig_dns.sk_storage_get(sk, 0, 0) : NULL;
}

int zt_recvmsg4(struct bpf_sock_addr *ctx)
{
    if (ctx->user_port != bpf_htons(ZT_PORT_DNS_PROXY) || ctx->user_ip4 != ZT_DNS_PROXY4)
        return 1;
    struct zt_dns_orig *sent = zt_dns_sent(ctx);
    if (!sent || sent->via4.family == 0)
        return 1;
    __u32 a;
    __builtin_memcpy(&a, &sent->via4.ip[12], 4);
    ctx->user_ip4 = a;
    ctx->user_port = sent->via4.port;
    zt_count(ZT_C_DNS_REPLY_REWRITE);
    return 1;
}

int zt_recvmsg6(struct bpf_sock_addr *ctx)
{
    if (ctx->user_port != bpf_htons(ZT_PORT_DNS_PROXY))
        return 1;
    __u32 s[4] = {ZT_LD32(ctx->user_ip6[0]), ZT_LD32(ctx->user_ip6[1]),
                  ZT_LD32(ctx->user_ip6[2]), ZT_LD32(ctx->user_ip6[3])};
    int via4 = zt_is_mapped(s) && s[3] == ZT_DNS_PROXY4;
    int via6 = s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == bpf_htonl(1);
    if (!via4 && !via6)
        return 1;
    struct zt_dns_orig *sent = zt_dns_sent(ctx);
    if (!sent)
        return 1;
    struct zt_addr *orig = via4 ? &sent->via4 : &sent->via6;
    if (orig->family == 0)
        return 1;
    __u32 w[4];
    __builtin_memcpy(w, orig->ip, 16); /* an IPv4 server as ::ffff:a.b.c.d, as the app sent it */
    ctx->user_ip6[0] = w[0];
    ctx->user_ip6[1] = w[1];
    ctx->user_ip6[2] = w[2];
    ctx->user_ip6[3] = w[3];
    ctx->user_port = orig->port;
    zt_count(ZT_C_DNS_REPLY_REWRITE);
    return 1;
}
