/* sockops: re-key a captured connection's original destination by the app's (ip, port)
 * (docs/design.md §6: re-keyed by the app's (ip, port) in sockops TCP_CONNECT_CB), which is what the
 * proxy sees as the peer of the socket accepted on 15001.
 *
 * The kernel calls this for every TCP socket on the machine, ~9 times per connection (TIMEOUT_INIT,
 * RWND_INIT and NEEDS_ECN on both ends, TCP_CONNECT_CB, ACTIVE/PASSIVE_ESTABLISHED_CB), so all but
 * TCP_CONNECT_CB return at once, and no callback flag is set: the app's original destination lives
 * in its socket storage and goes with the socket, so no STATE_CB is needed to clean it up (an
 * earlier version kept it by socket cookie and paid 4 more runs per connection to delete it).
 */
#include "zt_capture.h"

int zt_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
        return 1;
    struct bpf_sock *sk = skops->sk;
    if (!sk)
        return 1;
    struct zt_addr *orig = zt_orig_app.sk_storage_get(sk, 0, 0);
    if (!orig || (orig->kind & ZT_ORIG_DNS)) /* DNS went to the DNS proxy, which never asks */
        return 1;
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
    return 1;
}
