"""Small socket helpers for the tests: app-side code run inside a netns, bounded by timeouts."""

from __future__ import annotations

import ipaddress
import socket

from tests.netns.topo import Topology
from zt.capture.netns import run_in_netns


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect_from(netns: str, host: str, port: int, *, timeout: float = 3.0) -> socket.socket:
    """An unmarked app connection made inside netns (what capture must see)."""

    def dial() -> socket.socket:
        sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, dial, timeout=timeout + 5)


def app_server(netns: str, port: int, *, host: str = "::") -> socket.socket:
    """An unmarked dual-stack app listener inside netns, non-blocking accept with timeout 0.5 s."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
            sock.settimeout(0.5)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def nothing_pending(listener: socket.socket, wait: float = 0.3) -> bool:
    """True when no connection arrives on listener within `wait` seconds."""
    before = listener.gettimeout()
    listener.settimeout(wait)
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return True
    finally:
        listener.settimeout(before)
    conn.close()
    return False


def norm(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as a dual-stack socket reports it, IPv4-mapped unwrapped."""
    ip = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def addresses(topo: Topology, family: int) -> tuple[str, str]:
    """(pod ip, peer ip) of one family."""
    if family == 4:
        return topo.pod_ip4, topo.peer_ip4
    return topo.pod_ip6, topo.peer_ip6
