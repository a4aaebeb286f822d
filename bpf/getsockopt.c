/* cgroup/getsockopt: answer getsockopt(SOL_IP, SO_ORIGINAL_DST) on the socket the proxy accepted
 * on 15001 exactly as netfilter answers it after an iptables REDIRECT (one syscall, the same API):
 * a struct sockaddr_in with the app's original destination. IPv6 originals are answered at
 * (SOL_IPV6, IP6T_SO_ORIGINAL_DST) with a struct sockaddr_in6, as ip6tables does; asking at the
 * other family's level fails, as it does with netfilter.
 *
 * sockops keyed the original destination by the app's (ip, port) = the accepted socket's peer;
 * only sockets whose local port is 15001 are looked up.
 * The first question moves it from zt_orig_addr into the socket's own storage (zt_orig_proxy):
 * later questions get the same answer, and it is freed with the socket.
 *
 * Linked at the cgroup-v2 root, so it runs after every getsockopt() on the machine: anything but
 * those two questions on a socket zt captured is passed through untouched (zt_pass). zt's own entry
 * wins over netfilter's answer: with conntrack in the pod, netfilter only knows the connection as
 * app -> pod:15001 (connect4 rewrote it before the SYN existed).
 * Return 1 = hand ctx->retval / ctx->optval back to the caller.
 */
#include "zt_capture.h"

#define ZT_SOL_IP 0
#define ZT_SOL_IPV6 41
#define ZT_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST is 80 as well */
#define ZT_PAGE_SIZE 4096     /* the smallest page: zeroing a longer optlen is always safe */

struct zt_sockaddr_in {
    __u16 family;
    __u16 port; /* network order */
    __u32 addr; /* network order */
    __u8 zero[8];
};

struct zt_sockaddr_in6 {
    __u16 family;
    __u16 port; /* network order */
    __u32 flowinfo;
    __u8 addr[16];
    __u32 scope_id;
};

/* The original destination of the connection whose proxy-side socket is sk, or NULL. */
static __always_inline struct zt_addr *zt_proxy_orig(struct bpf_sock *sk)
{
    struct zt_addr *orig = zt_orig_proxy.sk_storage_get(sk, 0, 0);
    if (orig)
        return orig;
    struct zt_addr peer = {};
    if (sk->family == AF_INET) {
        zt_map4(&peer, sk->dst_ip4);
    } else {
        __u32 d[4] = {ZT_LD32(sk->dst_ip6[0]), ZT_LD32(sk->dst_ip6[1]),
                      ZT_LD32(sk->dst_ip6[2]), ZT_LD32(sk->dst_ip6[3])};
        __builtin_memcpy(peer.ip, d, 16);
    }
    peer.port = (__u16)sk->dst_port; /* network order, as sockops stored the app's port */
    struct zt_addr *found = zt_orig_addr.lookup(&peer);
    if (!found)
        return NULL;
    struct zt_addr copy = *found;
    orig = zt_orig_proxy.sk_storage_get(sk, &copy, BPF_SK_STORAGE_GET_F_CREATE);
    if (!orig)
        return NULL; /* no memory: the map entry stays, the caller gets the kernel's error */
    zt_orig_addr.delete(&peer);
    zt_count(ZT_C_SOCKOPT_ORIG);
    return orig;
}

/* Leave the reply as it is. A reply longer than a page must be handed back with optlen 0
 * (Documentation/bpf/prog_cgroup_sockopt.rst, "Large optval": "set optlen to zero, which indicates
 * that the kernel should use the original optval"): before Linux 6.5, returning with it untouched
 * turned every such reply (iptables-legacy's IPT_SO_GET_ENTRIES...) into EFAULT. Shorter replies
 * keep their optlen: another program on the same cgroup (a second zt in a lab) may have answered
 * before this one, and optlen 0 would drop its answer while keeping its retval 0. */
static __always_inline int zt_pass(struct bpf_sockopt *ctx)
{
    if (ctx->optlen > ZT_PAGE_SIZE)
        ctx->optlen = 0;
    return 1;
}

int zt_getsockopt(struct bpf_sockopt *ctx)
{
    int level = ctx->level;
    if (ctx->optname != ZT_SO_ORIGINAL_DST || (level != ZT_SOL_IP && level != ZT_SOL_IPV6))
        return zt_pass(ctx);
    struct bpf_sock *sk = ctx->sk;
    /* only a socket accepted on 15001 (src_port: its local port, host order): the peer of any
     * other socket (inbound, an upstream dial) may share an (ip, port) with a captured app */
    if (!sk || sk->src_port != ZT_PORT_OUTBOUND)
        return zt_pass(ctx);
    struct zt_addr *orig = zt_proxy_orig(sk);
    if (!orig)
        return zt_pass(ctx);
    void *optval = ctx->optval;
    void *end = ctx->optval_end;
    if (level == ZT_SOL_IP && orig->family == AF_INET) {
        struct zt_sockaddr_in *out = optval;
        if ((void *)(out + 1) > end)
            return zt_pass(ctx); /* the caller's buffer is too small: keep the kernel's error */
        out->family = AF_INET;
        out->port = orig->port;
        __builtin_memcpy(&out->addr, &orig->ip[12], 4);
        __builtin_memset(out->zero, 0, 8);
        ctx->optlen = sizeof(*out);
    } else if (level == ZT_SOL_IPV6 && orig->family == AF_INET6) {
        struct zt_sockaddr_in6 *out = optval;
        if ((void *)(out + 1) > end)
            return zt_pass(ctx);
        out->family = AF_INET6;
        out->port = orig->port;
        out->flowinfo = 0;
        __builtin_memcpy(out->addr, orig->ip, 16);
        out->scope_id = 0;
        ctx->optlen = sizeof(*out);
    } else {
        return zt_pass(ctx);
    }
    ctx->retval = 0;
    return 1;
}
