"""Byte layouts of the maps in bpf/zt_capture.h, as pure encode/decode functions.

Header contract: addresses are 16 bytes (IPv4 as ::ffff:a.b.c.d), ports in network order, the
family field in host order (little-endian here).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ZT_MARK: Final = 0x539
# SO_MARK of zt's deliveries to an app from the caller's own IP (zt/capture/origsrc.py): the
# pod's policy routing sends the app's replies, which take this mark, back to zt's socket. BPF
# and routing that leave zt's own sockets alone treat both marks alike (bpf/zt_capture.h).
ZT_MARK_ORIGSRC: Final = 0x53A
MAX_DELIVERIES: Final = 16384
PORT_OUTBOUND: Final = 15001
PORT_INBOUND: Final = 15006
PORT_HBONE: Final = 15008
# DNS capture (bpf/dns_sendmsg.c, dns_recvmsg.c, connect.c): a captured pod's UDP and TCP to port
# 53 goes to its DNS proxy on loopback in the pod netns, where the proxy must listen (UDP and TCP,
# marked sockets: zt.capture.netns.open_dns_sockets). Loopback, not the pod IP: reachable from
# every socket of the pod whatever IPs it has, never from outside it (docs/design.md §6, DNS).
PORT_DNS: Final = 53
PORT_DNS_PROXY: Final = 15053
DNS_PROXY_ADDRS: Final = ("127.0.0.1", "::1")
# getsockopt(SOL_IP, SO_ORIGINAL_DST) / (SOL_IPV6, IP6T_SO_ORIGINAL_DST): linux/netfilter_ipv4.h,
# linux/netfilter_ipv6/ip6_tables.h; bpf/getsockopt.c answers both like netfilter.
SO_ORIGINAL_DST: Final = 80
SOCKADDR_IN_SIZE: Final = 16
SOCKADDR_IN6_SIZE: Final = 28
MAX_PODS: Final = 256

# Listener kinds (ZT_L_*): zt_listeners key = slot * 3 + kind
L_OUTBOUND: Final = 0
L_INBOUND: Final = 1
L_HBONE: Final = 2
L_COUNT: Final = 3

POD_HAS_IP4: Final = 1
POD_HAS_IP6: Final = 2
POD_OUT_SKLOOKUP: Final = 4
POD_DNS: Final = 8
POD_ORIGSRC: Final = (
    16  # the pod has origsrc.py's reply routing (user space only: no program reads it)
)

# ZT_C_* in order: the index is the per-CPU array slot.
COUNTERS: Final = (
    "lookup_hbone",
    "lookup_inbound",
    "lookup_outbound",
    "lookup_self",
    "lookup_no_listener",
    "lookup_assign_error",
    "connect_redirect",
    "connect_skip_mark",
    "connect_skip_local",
    "connect_skip_noip",
    "connect_map_error",
    "sockops_keyed",
    "sockops_map_error",
    "peername_rewrite",
    "bind_denied",
    "sockopt_orig",
    "dns_redirect_udp4",
    "dns_redirect_udp6",
    "dns_redirect_tcp4",
    "dns_redirect_tcp6",
    "dns_reply_rewrite",
    "dns_skip_mark",
    "dns_skip_local",
    "dns_map_error",
    "lookup_delivery",
)

# name -> (key size, value size) of every map. zt_listeners: a socket fd on update, the socket
# cookie on lookup. zt_orig_app, zt_orig_proxy, zt_orig_dns: socket storage, keyed by a socket fd
# from user space (no iteration: tables.reset() skips them, they go with their sockets).
MAPS: Final = {
    "zt_pods": (8, 28),
    "zt_ips": (24, 16),
    "zt_listeners": (4, 8),
    "zt_orig_app": (4, 24),
    "zt_orig_addr": (24, 24),
    "zt_orig_proxy": (4, 24),
    "zt_orig_dns": (4, 48),
    "zt_counters": (4, 8),
    "zt_pod_meta": (8, 256),
    "zt_deliveries": (40, 4),
}

_ADDR = struct.Struct("<16sHHI")  # ip, port (bytes already big-endian), family, kind
_POD = struct.Struct("<4s16sII")
_DELIVERY = struct.Struct("<16s16sHHI")  # src, dst, ports (bytes already big-endian), zero
_IPVAL = struct.Struct("<IIQ")
_META = struct.Struct("<64s192s")
_SOCKADDR_IN = struct.Struct("!2xH4s8x")  # family (host order, skipped), port, addr, zero
_SOCKADDR_IN6 = struct.Struct("!2xH4x16s4x")  # family, port, flowinfo, addr, scope id


def ip16(ip: IPAddress) -> bytes:
    """16-byte form: IPv6 as is, IPv4 as IPv4-mapped."""
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def from_ip16(raw: bytes) -> IPAddress:
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


def addr_key(ip: IPAddress, port: int = 0, family: int = 0) -> bytes:
    """struct zt_addr; family 0 and port 0 in zt_ips keys, port set in zt_orig_addr keys."""
    return _ADDR.pack(ip16(ip), socket.htons(port), family, 0)


def delivery_key(src: IPAddress, sport: int, dst: IPAddress, dport: int) -> bytes:
    """struct zt_delivery: the 4-tuple of a delivery's SYN as the app's side sees it."""
    return _DELIVERY.pack(ip16(src), ip16(dst), socket.htons(sport), socket.htons(dport), 0)


@dataclass(frozen=True)
class OrigDst:
    ip: IPAddress
    port: int


def decode_addr(raw: bytes) -> OrigDst:
    ip, port, _family, _pad = _ADDR.unpack(raw)
    return OrigDst(from_ip16(ip), socket.ntohs(port))


def decode_sockaddr_in(raw: bytes) -> OrigDst:
    """The struct sockaddr_in that SO_ORIGINAL_DST returns."""
    port, packed = _SOCKADDR_IN.unpack(raw)
    return OrigDst(ipaddress.IPv4Address(packed), port)


def decode_sockaddr_in6(raw: bytes) -> OrigDst:
    """The struct sockaddr_in6 that IP6T_SO_ORIGINAL_DST returns."""
    port, packed = _SOCKADDR_IN6.unpack(raw)
    return OrigDst(ipaddress.IPv6Address(packed), port)


def pod_value(
    ip4: ipaddress.IPv4Address | None, ip6: ipaddress.IPv6Address | None, slot: int, flags: int
) -> bytes:
    return _POD.pack(
        ip4.packed if ip4 else b"\0" * 4, ip6.packed if ip6 else b"\0" * 16, slot, flags
    )


def decode_pod(raw: bytes) -> tuple[int, int]:
    """(slot, flags) of a zt_pods value."""
    _ip4, _ip6, slot, flags = _POD.unpack(raw)
    return slot, flags


def ipval(slot: int, flags: int, netns_cookie: int) -> bytes:
    return _IPVAL.pack(slot, flags, netns_cookie)


def meta_value(name: str, netns: str) -> bytes:
    return _META.pack(name.encode()[:63], netns.encode()[:191])


def decode_meta(raw: bytes) -> tuple[str, str]:
    name, netns = _META.unpack(raw)
    return name.rstrip(b"\0").decode(), netns.rstrip(b"\0").decode()


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def from_u64(raw: bytes) -> int:
    return int(struct.unpack("<Q", raw)[0])


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def listener_key(slot: int, kind: int) -> bytes:
    return u32(slot * L_COUNT + kind)


def sum_percpu(raw: bytes) -> int:
    """A per-CPU u64 value: one 8-byte slot per possible CPU, summed."""
    return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
