/* cgroup/bind4 + bind6 guard: in an enrolled pod only zt's marked sockets (zt_own_mark) may bind
 * 15001/15006/15008 (docs/design.md §6: A bind4/bind6 guard keeps apps from binding
 * 15001/15006/15008 in enrolled pods), and 15053 where the pod's DNS is captured (an app there
 * would answer the pod's DNS). Return 0 = bind() fails with EPERM.
 */
#include "zt_capture.h"

static __always_inline int zt_bind(struct bpf_sock_addr *ctx)
{
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct zt_pod *pod = zt_pods.lookup(&netns);
    if (!pod)
        return 1;
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    int dns = port == ZT_PORT_DNS_PROXY && (pod->flags & ZT_POD_DNS);
    if (port != ZT_PORT_OUTBOUND && port != ZT_PORT_INBOUND && port != ZT_PORT_HBONE && !dns)
        return 1;
    struct bpf_sock *sk = ctx->sk;
    if (sk && zt_own_mark(sk->mark))
        return 1;
    zt_count(ZT_C_BIND_DENIED);
    return 0;
}

int zt_bind4(struct bpf_sock_addr *ctx) { return zt_bind(ctx); }

int zt_bind6(struct bpf_sock_addr *ctx) { return zt_bind(ctx); }
