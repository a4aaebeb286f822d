"""Socket options zt sets on every TCP socket it accepts or dials, whatever room makes the socket
(capture's pod sockets, the proxy's dials, the accept loops)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Keepalive:
    """TCP keepalive (tcp(7) TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT), ztunnel's defaults
    (src/config.rs `SocketConfig`): the first probe after 180 s without traffic, then one every
    180 s, the connection is dropped after 9 unanswered probes. Well under the 10 min idle
    timeout of common load balancers and NATs, and one probe per 3 min costs nothing. Linux's
    own default (off; 2 h, 75 s, 9 when enabled) would let a vanished peer hold an fd for hours.
    Envoy sets none by default."""

    idle: int = 180  # seconds without traffic before the first probe
    interval: int = 180  # seconds between probes
    count: int = 9  # unanswered probes before the kernel drops the connection


KEEPALIVE = Keepalive()


def set_keepalive(sock: socket.socket, keepalive: Keepalive = KEEPALIVE) -> None:
    """SO_KEEPALIVE with `keepalive`'s timings on a TCP socket. A listener passes them on to the
    sockets it accepts (Linux copies them into the child socket)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.count)


def make_socket(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """`socket.socket(family, kind)`, with keepalive when it is TCP: the socket maker of callers
    that are not given one (a listener's options pass on to what it accepts)."""
    sock = socket.socket(family, kind)
    if kind == socket.SOCK_STREAM:
        try:
            set_keepalive(sock)
        except BaseException:
            sock.close()
            raise
    return sock
