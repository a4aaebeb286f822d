/* cgroup/getpeername4 + getpeername6: the app of a captured connection sees its original peer,
 * not <pod ip>:15001 (docs/design.md §6). Read from the socket storage connect4/6 wrote; every other
 * socket (no storage: one pointer test in the kernel) is left alone.
 */
#include "zt_capture.h"

int zt_getpeername4(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct zt_addr *orig = zt_orig_app.sk_storage_get(sk, 0, 0);
    if (!orig)
        return 1;
    __u32 a;
    __builtin_memcpy(&a, &orig->ip[12], 4);
    ctx->user_ip4 = a;
    ctx->user_port = orig->port;
    zt_count(ZT_C_PEERNAME_REWRITE);
    return 1;
}

int zt_getpeername6(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    if (!sk)
        return 1;
    struct zt_addr *orig = zt_orig_app.sk_storage_get(sk, 0, 0);
    if (!orig)
        return 1;
    __u32 w[4];
    __builtin_memcpy(w, orig->ip, 16);
    ctx->user_ip6[0] = w[0];
    ctx->user_ip6[1] = w[1];
    ctx->user_ip6[2] = w[2];
    ctx->user_ip6[3] = w[3];
    ctx->user_port = orig->port;
    zt_count(ZT_C_PEERNAME_REWRITE);
    return 1;
}
