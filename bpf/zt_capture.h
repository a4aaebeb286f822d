/* zt capture: the one header shared by every hook (docs/design.md §6).
 *
 * bcc compiles everything as ONE module (zt/capture/loader.py pastes this header and then every
 * C file of bpf/, because bcc rewrites map calls only in its main file), so the maps below exist
 * once and all programs share them. Constants the Python side also knows come in as cflags
 * "-D..." (docs/design.md §6, bcc quirk) and have the same defaults here.
 *
 * Byte order: addresses and ports stored in maps are in NETWORK order; addresses are always 16
 * bytes (IPv4 as IPv4-mapped IPv6, ::ffff:a.b.c.d), so one key layout serves both families.
 *
 * Maps (names and layouts are the contract with zt/capture/maps.py):
 *
 *   zt_pods        HASH      u64 netns cookie          -> struct zt_pod (enrolled pods)
 *   zt_ips         HASH      struct zt_addr (ip only)  -> struct zt_ipval (pod IP -> its pod)
 *   zt_listeners   SOCKMAP   u32 slot*3 + ZT_L_*       -> u64 listener socket
 *   zt_orig_app    SK_STORAGE on the app's socket      -> struct zt_addr: original destination,
 *                                                         written by connect4/6, read by sockops
 *                                                         and getpeername4/6; freed with the socket
 *                                                         (no close callback, no LRU eviction of
 *                                                         live connections). kind ZT_ORIG_DNS: a
 *                                                         DNS connect sent to the DNS proxy, which
 *                                                         sockops does not re-key
 *   zt_orig_dns    SK_STORAGE on the app's UDP socket  -> struct zt_dns_orig: the DNS server the
 *                                                         app last addressed, one per proxy address
 *                                                         it was sent to instead (127.0.0.1 or ::1);
 *                                                         written by sendmsg4/6 and UDP connect4/6,
 *                                                         read by recvmsg4/6 to show the reply as
 *                                                         coming from that server; freed with the
 *                                                         socket
 *   zt_orig_addr   LRU_HASH  struct zt_addr (app ip, port) -> struct zt_addr: the same, keyed as
 *                                                         the proxy sees its 15001 peer (sockops)
 *   zt_orig_proxy  SK_STORAGE on the proxy's accepted socket -> struct zt_addr: the same, moved
 *                                                         there from zt_orig_addr by getsockopt on
 *                                                         the first SO_ORIGINAL_DST question, then
 *                                                         answered again and again as netfilter
 *                                                         does; freed with the socket
 *   zt_counters    PERCPU_ARRAY u32 ZT_C_*             -> u64 verdict / error counters
 *   zt_pod_meta    HASH      u64 netns cookie          -> struct zt_pod_meta (Python only: names
 *                                                         for `zt capture status` from the pins)
 *   zt_deliveries  HASH      struct zt_delivery (4-tuple) -> u32 (1): zt's delivery to an app from
 *                                                         the caller's own address (original source,
 *                                                         zt/capture/origsrc.py), written by zt from
 *                                                         bind() until connect() returns, read by
 *                                                         sk_lookup so that SYN reaches the app.
 *                                                         Not LRU: an evicted entry would send its
 *                                                         SYN to 15006 silently; full, the update
 *                                                         fails (E2BIG) and zt delivers that one
 *                                                         from the pod's IP, counted (podnet.py)
 *
 * Marks: zt's sockets carry ZT_MARK (0x539), except its original-source deliveries, which carry
 * ZT_MARK_ORIGSRC (0x53a) so the pod's policy routing can send the app's replies back to zt (a
 * fwmark rule; the app's socket takes the SYN's mark, net.ipv4.tcp_fwmark_accept=1). Every rule
 * that leaves zt's own sockets alone treats both alike (zt_own_mark).
 */
#ifndef ZT_CAPTURE_H
#define ZT_CAPTURE_H

#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>

#ifndef ZT_MARK
#define ZT_MARK 0x539 /* SO_MARK of every socket zt creates for a pod (docs/design.md §6) */
#endif
#ifndef ZT_MARK_ORIGSRC
#define ZT_MARK_ORIGSRC 0x53a /* SO_MARK of zt's deliveries from the caller's IP (origsrc.py) */
#endif
#ifndef ZT_MAX_DELIVERIES
#define ZT_MAX_DELIVERIES 16384 /* deliveries mid-handshake at once (an entry lives that long) */
#endif
#ifndef ZT_PORT_OUTBOUND
#define ZT_PORT_OUTBOUND 15001
#endif
#ifndef ZT_PORT_INBOUND
#define ZT_PORT_INBOUND 15006
#endif
#ifndef ZT_PORT_HBONE
#define ZT_PORT_HBONE 15008
#endif
#ifndef ZT_PORT_DNS
#define ZT_PORT_DNS 53 /* what DNS capture steers (RFC 1035 4.2: UDP and TCP port 53) */
#endif
#ifndef ZT_PORT_DNS_PROXY
#define ZT_PORT_DNS_PROXY 15053 /* zt's DNS proxy, in the pod netns on 127.0.0.1 and ::1 */
#endif
#ifndef ZT_MAX_PODS
#define ZT_MAX_PODS 256
#endif
#ifndef ZT_SOCK_STREAM
#define ZT_SOCK_STREAM 1 /* SOCK_STREAM; asm/socket.h is not reachable from BPF */
#endif
#ifndef ZT_MAX_ORIG
#define ZT_MAX_ORIG 65536
#endif

/* Listener kinds: zt_listeners key = slot * ZT_L_COUNT + kind. */
#define ZT_L_OUTBOUND 0 /* 15001 */
#define ZT_L_INBOUND 1  /* 15006 */
#define ZT_L_HBONE 2    /* 15008 */
#define ZT_L_COUNT 3

/* zt_pod.flags */
#define ZT_POD_HAS_IP4 1
#define ZT_POD_HAS_IP6 2
#define ZT_POD_OUT_SKLOOKUP 4 /* outbound by policy routing + sk_lookup, not by connect4/6 */
#define ZT_POD_DNS 8          /* the pod's DNS (UDP and TCP port 53) goes to its DNS proxy */
#define ZT_POD_ORIGSRC 16     /* zt/capture/origsrc.py's reply routing is installed (user space) */

/* struct zt_addr.kind */
#define ZT_ORIG_DNS 1 /* zt_orig_app: a DNS connect sent to the DNS proxy, not to 15001 */

/* Counters: one per-CPU slot each; names in zt/capture/maps.py COUNTERS, same order. */
#define ZT_C_LOOKUP_HBONE 0         /* sk_lookup: pod ip:15008 -> hbone listener */
#define ZT_C_LOOKUP_INBOUND 1       /* sk_lookup: pod ip:other -> 15006 */
#define ZT_C_LOOKUP_OUTBOUND 2      /* sk_lookup: pod -> remote (routed local) -> 15001 */
#define ZT_C_LOOKUP_SELF 3          /* sk_lookup: source is a pod IP, left alone */
#define ZT_C_LOOKUP_NO_LISTENER 4   /* sk_lookup: sockmap entry missing -> SK_DROP */
#define ZT_C_LOOKUP_ASSIGN_ERROR 5  /* sk_lookup: bpf_sk_assign failed -> SK_DROP */
#define ZT_C_CONNECT_REDIRECT 6     /* connect4/6: rewritten to pod ip:15001 */
#define ZT_C_CONNECT_SKIP_MARK 7    /* connect4/6: zt's own (marked) socket */
#define ZT_C_CONNECT_SKIP_LOCAL 8   /* connect4/6: loopback or the pod's own IP */
#define ZT_C_CONNECT_SKIP_NOIP 9    /* connect4/6: pod has no IP of that family */
#define ZT_C_CONNECT_MAP_ERROR 10   /* connect4/6: store failed -> EPERM */
#define ZT_C_SOCKOPS_KEYED 11       /* sockops: original destination re-keyed by (app ip, port) */
#define ZT_C_SOCKOPS_MAP_ERROR 12   /* sockops: zt_orig_addr update failed */
#define ZT_C_PEERNAME_REWRITE 13    /* getpeername4/6: original peer shown to the app */
#define ZT_C_BIND_DENIED 14         /* bind4/6: unmarked bind of a zt port in an enrolled pod */
#define ZT_C_SOCKOPT_ORIG 15        /* getsockopt: SO_ORIGINAL_DST moved from zt_orig_addr */
#define ZT_C_DNS_REDIRECT_UDP4 16   /* sendmsg4, UDP connect4/6: v4 server -> 127.0.0.1:15053 */
#define ZT_C_DNS_REDIRECT_UDP6 17   /* sendmsg6, UDP connect6: v6 server -> [::1]:15053 */
#define ZT_C_DNS_REDIRECT_TCP4 18   /* connect4/6: TCP to a v4 server -> 127.0.0.1:15053 */
#define ZT_C_DNS_REDIRECT_TCP6 19   /* connect6: TCP to a v6 server -> [::1]:15053 */
#define ZT_C_DNS_REPLY_REWRITE 20   /* recvmsg4/6: proxy reply shown from the app's server */
#define ZT_C_DNS_SKIP_MARK 21       /* sendmsg, connect: zt's own (marked) socket to port 53 */
#define ZT_C_DNS_SKIP_LOCAL 22      /* sendmsg, connect: port 53 on loopback or the pod's IP */
#define ZT_C_DNS_MAP_ERROR 23       /* sendmsg, connect: store failed -> EPERM */
#define ZT_C_LOOKUP_DELIVERY 24     /* sk_lookup: zt's original-source delivery to the app, left alone */
#define ZT_C_MAX 25

struct zt_addr {
    __u8 ip[16];   /* IPv6, or IPv4-mapped ::ffff:a.b.c.d */
    __u16 port;    /* network order; 0 in zt_ips keys */
    __u16 family;  /* AF_INET or AF_INET6 of the original destination; 0 in keys */
    __u32 kind;    /* ZT_ORIG_* in zt_orig_app values; zero everywhere else */
};

/* zt_orig_dns: the last DNS server the app addressed, per proxy address the datagram went to
 * instead. Two slots because one dual-stack socket (musl's resolver) may query an IPv4 server
 * (sent to 127.0.0.1, the reply comes from ::ffff:127.0.0.1) and an IPv6 one (sent to ::1) at
 * once; family 0 = slot empty. */
struct zt_dns_orig {
    struct zt_addr via4; /* sent to 127.0.0.1:15053 */
    struct zt_addr via6; /* sent to [::1]:15053 */
};

/* zt_deliveries key: a delivery's 4-tuple as the app's side sees its SYN (src = the caller's IP,
 * zt's socket; dst = the pod IP and app port); ports in network order. */
struct zt_delivery {
    __u8 src[16];  /* IPv6, or IPv4-mapped */
    __u8 dst[16];
    __u16 sport;
    __u16 dport;
    __u32 pad;     /* zero */
};

struct zt_pod {
    __u32 ip4;     /* network order; the rewrite target of connect4 */
    __u32 ip6[4];  /* network order; the rewrite target of connect6 */
    __u32 slot;    /* index into zt_listeners / ZT_L_COUNT */
    __u32 flags;   /* ZT_POD_* */
};

struct zt_ipval {
    __u32 slot;
    __u32 flags;   /* ZT_POD_* of the owning pod */
    __u64 netns_cookie;
};

/* Names for `zt capture status`; no program reads it, it lives in bpffs so a restarted zt (and the
 * CLI) can tell which pod a netns cookie belongs to. NUL-padded UTF-8. */
struct zt_pod_meta {
    char name[64];
    char netns[192];
};

BPF_HASH(zt_pods, __u64, struct zt_pod, ZT_MAX_PODS);
BPF_HASH(zt_ips, struct zt_addr, struct zt_ipval, ZT_MAX_PODS * 8);
/* A plain BPF_TABLE (not BPF_SOCKMAP) so bcc rewrites .lookup(). The value is a socket fd on update
 * from user space, a referenced struct bpf_sock * on lookup in BPF, and the socket cookie on lookup
 * from user space (which the kernel only answers for 8-byte values, hence __u64). */
BPF_TABLE("sockmap", __u32, __u64, zt_listeners, ZT_MAX_PODS * ZT_L_COUNT);
/* Socket storage: user space reads it with a socket fd as the key (4 bytes). */
BPF_SK_STORAGE(zt_orig_app, struct zt_addr);
BPF_TABLE("lru_hash", struct zt_addr, struct zt_addr, zt_orig_addr, ZT_MAX_ORIG);
BPF_SK_STORAGE(zt_orig_proxy, struct zt_addr);
BPF_SK_STORAGE(zt_orig_dns, struct zt_dns_orig);
BPF_HASH(zt_deliveries, struct zt_delivery, __u32, ZT_MAX_DELIVERIES);
BPF_PERCPU_ARRAY(zt_counters, __u64, ZT_C_MAX);
BPF_HASH(zt_pod_meta, __u64, struct zt_pod_meta, ZT_MAX_PODS);

static __always_inline void zt_count(__u32 which)
{
    __u64 *v = zt_counters.lookup(&which);
    if (v)
        *v += 1;
}

/* One of zt's own sockets: ZT_MARK, or ZT_MARK_ORIGSRC on a delivery from the caller's IP. */
static __always_inline int zt_own_mark(__u32 mark)
{
    return mark == ZT_MARK || mark == ZT_MARK_ORIGSRC;
}

/* One 32-bit load of a context field: clang would otherwise merge neighbouring ip6 words into one
 * 64-bit load, which the verifier rejects ("invalid bpf_context access"). */
#define ZT_LD32(field) (*(volatile __u32 *)&(field))

/* IPv4 a (network order) -> ::ffff:a */
static __always_inline void zt_map4(struct zt_addr *out, __u32 a)
{
    __builtin_memset(out->ip, 0, 10);
    out->ip[10] = 0xff;
    out->ip[11] = 0xff;
    __builtin_memcpy(&out->ip[12], &a, 4);
}

static __always_inline int zt_is_mapped(const __u32 w[4])
{
    return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/* 127.0.0.0/8, network order */
static __always_inline int zt_is_loop4(__u32 a)
{
    return (bpf_ntohl(a) >> 24) == 127;
}

/* ::1, ::, and for IPv4-mapped addresses 127/8 and 0.0.0.0 */
static __always_inline int zt_is_loop6(const __u32 d[4])
{
    if (zt_is_mapped(d))
        return zt_is_loop4(d[3]) || d[3] == 0;
    return d[0] == 0 && d[1] == 0 && d[2] == 0 && (d[3] == bpf_htonl(1) || d[3] == 0);
}

/* d (IPv6 or IPv4-mapped) is one of the pod's own addresses */
static __always_inline int zt_is_own6(const struct zt_pod *pod, const __u32 d[4])
{
    if (zt_is_mapped(d))
        return d[3] == pod->ip4;
    return d[0] == pod->ip6[0] && d[1] == pod->ip6[1] && d[2] == pod->ip6[2] &&
           d[3] == pod->ip6[3];
}

/* DNS capture (docs/design.md §6, DNS): shared by connect.c, dns_sendmsg.c, dns_recvmsg.c */

/* The DNS proxy's addresses in the pod netns: loopback, so it is reachable from every socket of
 * the pod (whatever IPs the pod has) and from nothing outside it. */
#define ZT_DNS_PROXY4 bpf_htonl(0x7f000001) /* 127.0.0.1 */

/* An enrolled pod whose DNS is captured: port 53 (network order in ctx) in a ZT_POD_DNS pod. */
static __always_inline struct zt_pod *zt_dns_pod(struct bpf_sock_addr *ctx)
{
    if (ctx->user_port != bpf_htons(ZT_PORT_DNS))
        return NULL;
    __u64 netns = bpf_get_netns_cookie(ctx);
    struct zt_pod *pod = zt_pods.lookup(&netns);
    if (!pod || !(pod->flags & ZT_POD_DNS))
        return NULL;
    return pod;
}

/* Remember where a UDP DNS datagram was meant to go, in the slot of the proxy address it is sent
 * to instead (via6: [::1], else 127.0.0.1); 0 when there is no memory for it. */
static __always_inline int zt_dns_remember_udp(struct bpf_sock *sk, struct zt_addr *orig, int via6)
{
    struct zt_dns_orig *stored =
        sk ? zt_orig_dns.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : NULL;
    if (!stored)
        return 0;
    if (via6)
        stored->via6 = *orig;
    else
        stored->via4 = *orig;
    return 1;
}

#endif /* ZT_CAPTURE_H */
