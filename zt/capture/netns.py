"""Sockets inside a pod's network namespace (docs/design.md §6: Every socket the proxy creates for a
pod ... carries SO_MARK 0x539 and is created inside the pod netns (setns in a worker thread,
restore in finally; Python < 3.12 needs ctypes setns)).

A socket keeps the netns it was created in, so callers use the returned sockets from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute

from zt.capture import maps
from zt.capture.bpfsys import setns
from zt.capture.errors import PodSpecError
from zt.capture.maps import ZT_MARK, ZT_MARK_ORIGSRC, IPAddress
from zt.sockopt import set_keepalive

T = TypeVar("T")

SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (5.14+)
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_FREEBIND = 15  # include/uapi/linux/in.h
IPV6_FREEBIND = 78  # include/uapi/linux/in6.h (4.15)
NETNS_RUN_DIR = Path("/run/netns")


def netns_path(netns: str | Path) -> Path:
    """A name under /run/netns or a path (docs/design.md §4 `netns`)."""
    text = str(netns)
    path = Path(text) if "/" in text else NETNS_RUN_DIR / text
    if not path.exists():
        raise PodSpecError(f"netns: got {text!r}, expected a name under /run/netns or a path")
    return path


def run_in_netns(netns: str | Path, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run fn in a fresh thread that has entered netns; the thread restores its netns in finally."""
    target = netns_path(netns)
    box: dict[str, T] = {}
    err: list[BaseException] = []

    def worker() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            fd = os.open(target, os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
            try:
                box["v"] = fn()
            finally:
                setns(own)  # a thread that stays in a pod netns would leak it to later work
        except BaseException as exc:
            err.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=worker, name=f"netns:{target.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"work in netns {target} did not finish in {timeout} s")
    if err:
        raise err[0]
    return box["v"]


@contextlib.contextmanager
def iproute_in(netns: str | Path) -> Iterator[IPRoute]:
    """An rtnetlink handle on netns, without fork: the netlink socket is made by a thread inside
    netns (a socket keeps its netns). pyroute2's own netns support forks a child and ends it with
    SIGTERM; in an asyncio process that child shares the loop's signal wakeup fd, and the parent
    then runs its SIGTERM handler (seen as a node daemon draining itself right after start)."""

    def make() -> int:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE).detach()

    ipr = IPRoute(fileno=run_in_netns(netns, make))
    try:
        yield ipr
    finally:
        ipr.close()


def marked_socket(
    family: int = socket.AF_INET6,
    *,
    transparent: bool = False,
    kind: int = socket.SOCK_STREAM,
    mark: int = ZT_MARK,
) -> socket.socket:
    """A socket with SO_MARK 0x539 (in the calling thread's netns); optionally IP_TRANSPARENT.
    A TCP socket also gets keepalive (zt/sockopt.py `KEEPALIVE`, ztunnel's timings): an
    upstream or app that vanished without a FIN or RST must not hold the relay's fds for ever;
    a listener passes the same options on to the sockets it accepts."""
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        if kind == socket.SOCK_STREAM:
            set_keepalive(sock)
        if transparent:
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def origsrc_socket(source: IPAddress) -> socket.socket:
    """zt's delivery socket that connects to the app from the caller's own IP (made in the
    calling thread's netns): marked ZT_MARK_ORIGSRC, IP(V6)_TRANSPARENT and FREEBIND (bind to an
    address the netns does not own), bound to (source, 0), so the kernel picks its port now and
    the 4-tuple is known before connect() (zt/capture/origsrc.py)."""
    v4 = source.version == 4
    family = socket.AF_INET if v4 else socket.AF_INET6
    sock = marked_socket(family, transparent=True, mark=ZT_MARK_ORIGSRC)
    try:
        if v4:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        # Bound to lo, the route lookup skips the local table's route to the pod IP (its device
        # is eth0) and takes the fwmark rule's `local default dev lo`, so the SYN's
        # ingress_ifindex is lo's, which no packet from outside the pod can have (origsrc.py).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        sock.bind((str(source), 0))
    except BaseException:
        sock.close()
        raise
    return sock


def open_listener(
    netns: str | Path,
    port: int,
    *,
    transparent: bool = False,
    backlog: int = 128,
    reuse_port: bool = False,
) -> socket.socket:
    """A marked dual-stack listener on [::]:port inside netns (a v6 SYN can't be assigned to a
    v4 socket, docs/design.md §6), so one socket serves IPv4 and IPv6.

    `reuse_port`: join the port's SO_REUSEPORT group (node worker processes each open one; the
    kernel spreads connections over the group, also after sk_lookup assigned one member)."""

    def make() -> socket.socket:
        sock = marked_socket(socket.AF_INET6, transparent=transparent)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # before bind(): the group is formed at bind time
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:  # the v4 half of a dual-stack socket checks IP_TRANSPARENT
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind(("::", port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def dial_marked(
    netns: str | Path, address: tuple[str, int], *, timeout: float = 10.0
) -> socket.socket:
    """A marked TCP connection from inside netns (an upstream dial or delivery to the app)."""
    host = address[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def make() -> socket.socket:
        sock = marked_socket(family)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make, timeout=timeout + 5)


def netns_cookie(netns: str | Path) -> int:
    """SO_NETNS_COOKIE of netns: what the cgroup programs key enrolled pods by."""

    def read() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        return int(struct.unpack("<Q", raw)[0])

    return run_in_netns(netns, read)


def socket_netns_cookie(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("<Q", raw)[0])


def open_dns_sockets(
    netns: str | Path, *, backlog: int = 128, reuse_port: bool = False
) -> list[socket.socket]:
    """The DNS proxy's marked sockets inside netns, where DNS capture sends the pod's port-53
    traffic (maps.DNS_PROXY_ADDRS, maps.PORT_DNS_PROXY): UDP then TCP (listening) on 127.0.0.1,
    then on ::1 unless the pod has no IPv6 loopback (IPv6 off: its apps cannot send to an IPv6
    server either). The caller owns and closes them."""

    def make() -> list[socket.socket]:
        made: list[socket.socket] = []
        try:
            for host in maps.DNS_PROXY_ADDRS:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = marked_socket(family, kind=kind)
                    made.append(sock)
                    if kind == socket.SOCK_STREAM:
                        # TCP only: a restarted proxy rebinds past TIME_WAIT. On UDP it would let
                        # another SO_REUSEADDR socket in the pod bind 15053 too and take datagrams.
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    try:
                        sock.bind((host, maps.PORT_DNS_PROXY))
                    except OSError as exc:
                        if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                            made.pop().close()
                            continue
                        raise
                    if kind == socket.SOCK_STREAM:
                        sock.listen(backlog)
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return made

    return run_in_netns(netns, make)
