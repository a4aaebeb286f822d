/* sockops: re-key a captured connection's original destination by the app's (ip, port)
 * (DESIGN.md §6: "re-keyed by the app's (ip, port) in sockops TCP_CONNECT_CB"), which is what the
 * proxy sees as the peer of the socket accepted on 15001; and forget the cookie entry on close.
 */
#include "zt_capture.h"

int zt_sockops(struct bpf_sock_ops *skops)
{
    __u32 op = skops->op;
    if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;
    __u64 cookie = bpf_get_socket_cookie(skops);
    struct zt_addr *orig = zt_orig_cookie.lookup(&cookie);
    if (!orig)
        return 1;
    if (op == BPF_SOCK_OPS_STATE_CB) {
        if (skops->args[1] == BPF_TCP_CLOSE)
            zt_orig_cookie.delete(&cookie);
        return 1;
    }
    struct zt_addr app = {};
    if (skops->family == AF_INET) {
        zt_map4(&app, skops->local_ip4);
    } else {
        __u32 l[4] = {ZT_LD32(skops->local_ip6[0]), ZT_LD32(skops->local_ip6[1]),
                      ZT_LD32(skops->local_ip6[2]), ZT_LD32(skops->local_ip6[3])};
        __builtin_memcpy(app.ip, l, 16);
    }
    app.port = bpf_htons((__u16)skops->local_port); /* local_port is in host order */
    struct zt_addr val = *orig;
    if (zt_orig_addr.update(&app, &val))
        zt_count(ZT_C_SOCKOPS_MAP_ERROR);
    else
        zt_count(ZT_C_SOCKOPS_KEYED);
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}
