/* sk_lookup: steer new TCP connections in an enrolled pod's netns to zt's listeners (docs/design.md §6).
 *
 * Linked (BPF link on the netns fd) into every enrolled pod netns. Runs only when no established
 * socket matches, i.e. for SYNs. Decisions, in order:
 *   local ip is a pod IP, remote ip is a pod IP of the same pod -> pass (in-pod / delivery to app)
 *   local ip is a pod IP, the SYN came in on lo, and its 4-tuple is in zt_deliveries
 *                                                               -> pass (zt's delivery to the app
 *     from the caller's IP: zt/capture/origsrc.py). Sound because only zt writes zt_deliveries,
 *     from bind() until connect() returns, for the exact 4-tuple of its own marked socket; and a
 *     SYN whose ingress_ifindex is lo was sent inside that netns (a packet from another netns has
 *     the interface it crossed), so no packet from outside the pod can match an entry. Inside,
 *     a pod app with CAP_NET_RAW could forge one (guessing a live 4-tuple); it would reach only
 *     its own pod's app, from a source it can forge at that app anyway. zt's socket is bound to
 *     lo for that: a SYN to a local address otherwise
 *     carries the device of the local table's route (the pod's eth0; measured on 6.18). The
 *     4-tuple, not the interface alone: in the sk_lookup outbound mode the pod's own captured
 *     SYNs to a same-node pod also arrive on lo with two pod IPs, in the other order.
 *   remote ip is a pod IP whose pod uses sk_lookup outbound, the SYN came in on lo, and the local
 *     ip is another pod's                                       -> the remote pod's 15001 listener
 *     (same-node pod to pod: the source pod's policy routing delivered its app's SYN locally, in
 *     the *source* netns. Checked after the delivery rule because a pod's own SYNs are not the
 *     only ones on its lo with another pod's IP as source: zt's deliveries from that pod to this
 *     one arrive there too, passed above. No packet from outside the pod arrives on lo; a pod
 *     app with CAP_NET_RAW can put any source on a SYN inside its own netns, as everywhere.)
 *   local ip is a pod IP, port 15008                            -> the pod's HBONE listener
 *   local ip is a pod IP, any other port                        -> the pod's 15006 listener
 *   remote ip is a pod IP whose pod uses sk_lookup outbound     -> the pod's 15001 listener
 *     (policy routing delivered the app's SYN locally; destination is kept: getsockname())
 *   anything else                                               -> pass
 * A missing listener is SK_DROP: fail closed, never bypass the proxy.
 */
#include "zt_capture.h"

static __always_inline int zt_assign(struct bpf_sk_lookup *ctx, __u32 slot, __u32 kind, __u32 ok)
{
    __u32 key = slot * ZT_L_COUNT + kind;
    struct bpf_sock *sk = (struct bpf_sock *)zt_listeners.lookup(&key);
    if (!sk) {
        zt_count(ZT_C_LOOKUP_NO_LISTENER);
        return SK_DROP;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk); /* the sockmap lookup took a reference: release on every path */
    if (err) {
        zt_count(ZT_C_LOOKUP_ASSIGN_ERROR);
        return SK_DROP;
    }
    zt_count(ok);
    return SK_PASS;
}

/* The SYN of one of zt's deliveries from the caller's IP (zt_deliveries, written by zt). */
static __always_inline int zt_is_delivery(struct bpf_sk_lookup *ctx, const struct zt_addr *local,
                                          const struct zt_addr *remote)
{
    struct zt_delivery key = {};
    __builtin_memcpy(key.src, remote->ip, 16);
    __builtin_memcpy(key.dst, local->ip, 16);
    key.sport = (__u16)ctx->remote_port; /* network order (5.17+: a __be16 field) */
    key.dport = bpf_htons((__u16)ctx->local_port); /* local_port is in host order */
    return zt_deliveries.lookup(&key) != NULL;
}

int zt_sk_lookup(struct bpf_sk_lookup *ctx)
{
    struct zt_addr local = {};
    struct zt_addr remote = {};

    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    if (ctx->family == AF_INET) {
        zt_map4(&local, ctx->local_ip4);
        zt_map4(&remote, ctx->remote_ip4);
    } else {
        __u32 l[4] = {ZT_LD32(ctx->local_ip6[0]), ZT_LD32(ctx->local_ip6[1]),
                      ZT_LD32(ctx->local_ip6[2]), ZT_LD32(ctx->local_ip6[3])};
        __u32 r[4] = {ZT_LD32(ctx->remote_ip6[0]), ZT_LD32(ctx->remote_ip6[1]),
                      ZT_LD32(ctx->remote_ip6[2]), ZT_LD32(ctx->remote_ip6[3])};
        __builtin_memcpy(local.ip, l, 16);
        __builtin_memcpy(remote.ip, r, 16);
    }

    struct zt_ipval *src = zt_ips.lookup(&remote);
    struct zt_ipval *dst = zt_ips.lookup(&local);
    if (dst) {
        /* "Connections whose source IP equals the pod IP are left alone" (docs/design.md §6) */
        if (src && src->slot == dst->slot) {
            zt_count(ZT_C_LOOKUP_SELF);
            return SK_PASS;
        }
#ifdef ZT_HAVE_INGRESS_IFINDEX
        if (ctx->ingress_ifindex == ZT_LOOPBACK_IFINDEX && zt_is_delivery(ctx, &local, &remote)) {
            zt_count(ZT_C_LOOKUP_DELIVERY);
            return SK_PASS;
        }
        /* bpf_get_netns_cookie() is not offered to sk_lookup programs (EINVAL on 6.18); the
         * loopback ifindex (1 in every netns) tells the source pod's netns from the destination's. */
        if (src && (src->flags & ZT_POD_OUT_SKLOOKUP) && ctx->ingress_ifindex == ZT_LOOPBACK_IFINDEX)
            return zt_assign(ctx, src->slot, ZT_L_OUTBOUND, ZT_C_LOOKUP_OUTBOUND);
#endif
        if (ctx->local_port == ZT_PORT_HBONE) /* local_port is in host order */
            return zt_assign(ctx, dst->slot, ZT_L_HBONE, ZT_C_LOOKUP_HBONE);
        return zt_assign(ctx, dst->slot, ZT_L_INBOUND, ZT_C_LOOKUP_INBOUND);
    }
    if (src && (src->flags & ZT_POD_OUT_SKLOOKUP))
        return zt_assign(ctx, src->slot, ZT_L_OUTBOUND, ZT_C_LOOKUP_OUTBOUND);
    return SK_PASS;
}
