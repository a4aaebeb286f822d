"""TCP keepalive (zt/sockopt.py: ztunnel's 180 s / 180 s / 9) on every socket zt accepts or makes,
read back from the kernel: each kind is opened for real on loopback, then every connected TCP
socket of this process that belongs to it is found through /proc/self/fd and asked for its
options. That the kernel acts on them is tests/netns/test_keepalive.py's."""

from __future__ import annotations

import asyncio
import os
import socket

from tests.proxy.helpers import Pki, echo_handler, run, zt_pair
from zt.dns.server import DnsServer, ServerSettings
from zt.dns.upstream import parse_upstream
from zt.identity.tls import client_context
from zt.proxy.client import dial
from zt.proxy.tls import server_peer_check
from zt.sockopt import KEEPALIVE, make_socket
from zt.state.snapshot import EMPTY_SNAPSHOT

ZTUNNEL = (1, KEEPALIVE.idle, KEEPALIVE.interval, KEEPALIVE.count)
Ends = tuple[tuple[str, int], tuple[str, int]]  # (local, peer), hosts as text


def options(sock: socket.socket) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


def connected_tcp() -> dict[Ends, tuple[int, int, int, int]]:
    """Every connected TCP socket of this process: its (local, peer) and keepalive options."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))  # family and type from the kernel
        except OSError:
            continue  # closed meanwhile
        with sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (2, 10):
                continue
            try:
                local, peer = sock.getsockname()[:2], sock.getpeername()[:2]
            except OSError:
                continue  # a listener
            found[(local, peer)] = options(sock)
    return found


def test_every_socket_zt_accepts_or_dials_has_ztunnels_keepalive(pki: Pki) -> None:
    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            # app -> forwarder (accepted by forward.py) -> pooled HBONE dial (asyncio TLS) ->
            # HboneServer (accepted by accept.py) -> delivery dial (connect_direct) -> echo
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            # an HBONE dial with OpenSSL on the socket (tlssocket.py, the kTLS path)
            on_socket = await dial(
                pair.hbone,
                client_context(pki.client),
                peer_check=server_peer_check([pki.server.identity]),
                tls_on_socket=True,
            )
            # DNS over TCP: the proxy's listener from its default socket maker
            dns_server = DnsServer(
                lambda: EMPTY_SNAPSHOT,
                [parse_upstream("127.0.0.1:9")],
                client_uid="keepalive",
                settings=ServerSettings(port=0),
            )
            await dns_server.start()
            assert dns_server.tcp_address is not None
            host, port = dns_server.tcp_address
            _, dns_client = await asyncio.open_connection(host, port)
            await asyncio.sleep(0.05)
            try:
                sockets = connected_tcp()
            finally:
                dns_client.close()
                await dns_server.close()
                on_socket.close()
                writer.close()
        apps, srv, target = pair.app.port, pair.hbone.port, pair.target.port
        ours = {
            "forwarder accepted": [e for e in sockets if e[0][1] == apps],
            "hbone dialed": [e for e in sockets if e[1][1] == srv],
            "hbone accepted": [e for e in sockets if e[0][1] == srv],
            "delivery dialed": [e for e in sockets if e[1][1] == target],
            "dns accepted": [e for e in sockets if e[0][1] == port],
        }
        assert {kind: len(ends) for kind, ends in ours.items()} == {
            "forwarder accepted": 1,
            "hbone dialed": 2,  # the pool's and the OpenSSL-on-socket one
            "hbone accepted": 2,
            "delivery dialed": 1,
            "dns accepted": 1,
        }
        for kind, ends in ours.items():
            for end in ends:
                assert sockets[end] == ZTUNNEL, f"{kind} {end}: {sockets[end]}"

    run(body())


def test_the_default_socket_maker_sets_keepalive_on_tcp_only() -> None:
    with make_socket(socket.AF_INET6) as tcp, make_socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        assert options(tcp) == ZTUNNEL
        assert u.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
