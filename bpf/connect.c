/* cgroup/connect4 + connect6: outbound capture, default mode (docs/design.md §6).
 *
 * Linked once at the cgroup-v2 root, so it runs for every connect() on the machine: it must leave
 * alone everything that is not an enrolled pod (netns cookie not in zt_pods). In an enrolled pod:
 * loopback, the pod's own IPs and sockets marked ZT_MARK are left alone; other TCP connects are
 * rewritten to <pod ip>:15001 and the original destination is stored in the socket's own storage
 * (zt_orig_app; sockops re-keys it by the app's (ip, port) once the source port is known). A socket
 * may connect() again after a failed attempt: every attempt overwrites or forgets what an earlier
 * one stored, so getpeername and sockops never see a stale destination.
 * Return 1 = let connect() proceed (rewritten or not). The one exception: when the original
 * destination cannot be stored, return 0 (connect() fails with EPERM) - fail closed, because
 * letting the connection through unrewritten would bypass the proxy.
 */
#include "zt_capture.h"

/* Store the original destination in the socket's storage; 0 when there is no memory for it. */
static __always_inline int zt_remember(struct bpf_sock_addr *ctx, struct zt_addr *orig)
{
    struct bpf_sock *sk = ctx->sk;
    struct zt_addr *stored =
        sk ? zt_orig_app.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;
    if (!stored) {
        zt_count(ZT_C_CONNECT_MAP_ERROR);
        return 0;
    }
    *stored = *orig; /* F_CREATE alone would keep the value of an earlier connect() */
    zt_count(ZT_C_CONNECT_REDIRECT);
    return 1;
}

/* An enrolled pod's TCP connect left alone: forget what an earlier connect() stored. */
static __always_inline int zt_leave(struct bpf_sock_addr *ctx, __u32 why)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk)
        zt_orig_app.sk_storage_delete(sk);
    zt_count(why);
    return 1;
}

/* The enrolled pod whose TCP connect this is, or NULL to leave it alone: not an enrolled netns, not
 * TCP, a pod whose outbound goes through sk_lookup, or one of zt's own (marked) sockets. */
static __always_inline struct zt_pod *zt_capturing_pod(struct bpf_sock_addr *ctx)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct zt_pod *pod = zt_pods.lookup(&netns);
    if (!pod || ctx->type != ZT_SOCK_STREAM || (pod->flags & ZT_POD_OUT_SKLOOKUP))
        return NULL;
    struct bpf_sock *sk = ctx->sk;
    if (sk && sk->mark == ZT_MARK) {
        zt_leave(ctx, ZT_C_CONNECT_SKIP_MARK);
        return NULL;
    }
    return pod;
}

int zt_connect4(struct bpf_sock_addr *ctx)
{
    struct zt_pod *pod = zt_capturing_pod(ctx);
    if (!pod)
        return 1;
    __u32 dst = ctx->user_ip4;
    if (zt_is_loop4(dst) || dst == pod->ip4 || dst == 0)
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_LOCAL);
    if (!(pod->flags & ZT_POD_HAS_IP4))
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_NOIP);
    struct zt_addr orig = {};
    zt_map4(&orig, dst);
    orig.port = (__u16)ctx->user_port;
    orig.family = AF_INET;
    if (!zt_remember(ctx, &orig))
        return 0;
    ctx->user_ip4 = pod->ip4;
    ctx->user_port = bpf_htons(ZT_PORT_OUTBOUND);
    return 1;
}

int zt_connect6(struct bpf_sock_addr *ctx)
{
    struct zt_pod *pod = zt_capturing_pod(ctx);
    if (!pod)
        return 1;
    __u32 d[4] = {ZT_LD32(ctx->user_ip6[0]), ZT_LD32(ctx->user_ip6[1]),
                  ZT_LD32(ctx->user_ip6[2]), ZT_LD32(ctx->user_ip6[3])};
    int mapped = zt_is_mapped(d);
    /* ::1, ::, and for IPv4-mapped destinations 127/8 and 0.0.0.0 */
    int loop = mapped ? (zt_is_loop4(d[3]) || d[3] == 0)
                      : (d[0] == 0 && d[1] == 0 && d[2] == 0 &&
                         (d[3] == bpf_htonl(1) || d[3] == 0));
    int own = mapped ? d[3] == pod->ip4
                     : (d[0] == pod->ip6[0] && d[1] == pod->ip6[1] && d[2] == pod->ip6[2] &&
                        d[3] == pod->ip6[3]);
    if (loop || own)
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_LOCAL);
    if (!(pod->flags & (mapped ? ZT_POD_HAS_IP4 : ZT_POD_HAS_IP6)))
        return zt_leave(ctx, ZT_C_CONNECT_SKIP_NOIP);
    struct zt_addr orig = {};
    __builtin_memcpy(orig.ip, d, 16);
    orig.port = (__u16)ctx->user_port;
    orig.family = mapped ? AF_INET : AF_INET6;
    if (!zt_remember(ctx, &orig))
        return 0;
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
