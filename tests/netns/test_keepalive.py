"""TCP keepalive ends an idle HBONE connection whose peer vanished (zt/sockopt.py), on a real
veth between two namespaces: the keepalive scaled down to 1 s idle / 1 s interval / 3 probes, the
HTTP/2 PINGs off on both sides, the peer's link taken down. The client's connection must die of
ETIMEDOUT after about idle + count x interval = 4 s: the kernel's doing, not zt's PING timeout
(which is off) nor a FIN or RST (nothing crosses a downed link)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from tests.netns.topo import Topology
from tests.proxy.helpers import Pki, run
from zt.addr import SocketAddr
from zt.capture.netns import marked_socket, run_in_netns
from zt.hbone.settings import HboneSettings
from zt.identity.tls import client_context, server_context
from zt.proxy.accept import listening_socket
from zt.proxy.driver import HboneDriver
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check, server_peer_check
from zt.sockopt import Keepalive, set_keepalive

pytestmark = pytest.mark.root

SCALED = Keepalive(idle=1, interval=1, count=3)
BUDGET = SCALED.idle + SCALED.count * SCALED.interval  # 4 s
NO_PING = HboneSettings(ping_interval=None)


class Watched(HboneDriver):
    """The client driver, keeping the error its transport ended with."""

    lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        super().connection_lost(exc)


def test_an_idle_hbone_connection_to_a_vanished_peer_dies_of_tcp_keepalive(
    topo: Topology, tmp_path: Path
) -> None:
    pki = Pki.create(tmp_path)
    server_ip = ipaddress.ip_address(topo.peer_ip4)

    async def body() -> tuple[float, Exception | None, str]:
        listener = run_in_netns(topo.peer, lambda: listening_socket(SocketAddr(server_ip, 0)))
        server = HboneServer(
            server_context(pki.server),
            peer_check=client_peer_check(pki.ca.trust_domain),
            settings=NO_PING,
        )
        target = await server.start_on(listener)
        try:
            # the client's socket as zt makes it in a pod (marked, keepalive), then scaled down
            sock = run_in_netns(topo.pod, lambda: marked_socket(socket.AF_INET))
            set_keepalive(sock, SCALED)
            sock.setblocking(False)
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (str(server_ip), target.port)), 5
            )
            # what zt.proxy.client.dial does with a socket made for it, with a driver that
            # keeps the transport's error
            driver = Watched(
                "client", settings=NO_PING, peer_check=server_peer_check([pki.server.identity])
            )
            await asyncio.get_running_loop().create_connection(
                lambda: driver, sock=sock, ssl=client_context(pki.client), server_hostname=""
            )
            await asyncio.wait_for(driver.ready, 5)
            await asyncio.sleep(0.2)  # handshake and SETTINGS ACKs answered: nothing in flight
            down = time.monotonic()
            run_in_netns(topo.peer, _link_down)  # the peer's end of the veth: nothing crosses
            try:
                await asyncio.wait_for(asyncio.shield(driver.closed), BUDGET + 8)
            finally:
                driver.close()
            return time.monotonic() - down, driver.lost, driver.close_reason
        finally:
            await server.shutdown(0.1)

    elapsed, lost, reason = run(body(), timeout=30)
    print(f"[keepalive] died after {elapsed:.2f} s: {lost!r} ({reason})")
    assert isinstance(lost, OSError) and lost.errno == errno.ETIMEDOUT, (lost, reason)
    assert BUDGET - 0.5 <= elapsed <= BUDGET + 4, elapsed


def _link_down() -> None:
    """In the calling thread's netns (a thread, not pyroute2's NetNS: docs/design.md §10)."""
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="down")
