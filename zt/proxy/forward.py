"""A plain TCP listener whose every connection the outbound flow carries to one destination: the
client half of a zt pair on a host without capture (the tests, the bench).

Tunnel set-up cost (docs/PERFORMANCE.md): accepted connections are held by a TCP-side protocol
from the start (no StreamReader/StreamWriter); the flow's relay adopts the transport and replays
what the app sent while the tunnel was being opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from zt.addr import SocketAddr, from_sockaddr
from zt.proxy.flow import OK, Outcome
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.tcpside import HeldTcp
from zt.sockopt import set_keepalive
from zt.state.route import Route, RouteKind

log = logging.getLogger("zt.proxy.forward")
RECENT = 1024


def fixed_route(key: PoolKey, authority: SocketAddr) -> Route:
    """Every connection goes to `authority` through the HBONE server of `key`."""
    expected = tuple(sorted(str(i) for i in key.expected))
    return Route(RouteKind.HBONE, key.destination, authority, expected, "fixed route")


class _AppSide(HeldTcp):
    """An accepted app connection: handed to the flow as soon as it exists."""

    def __init__(self, forwarder: TcpToHbone) -> None:
        super().__init__()
        self._forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # ztunnel's keepalive on every socket it accepts (zt/sockopt.py)
            set_keepalive(sock)
        self._forwarder._spawn(self)


class TcpToHbone:
    """Accept TCP on `listen`; `flow` carries each connection to `destination`. A refused tunnel
    (non-200, dial or TLS failure) resets the accepted connection."""

    def __init__(self, flow: OutboundFlow, destination: SocketAddr) -> None:
        self.flow = flow
        self.destination = destination
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Recent outcomes, for tests and debugging (bounded: the forwarder may run for days).
        self.results: deque[Outcome] = deque(maxlen=RECENT)
        self.refused: deque[Outcome] = deque(maxlen=RECENT)

    @classmethod
    def via(cls, pool: HbonePool, key: PoolKey, authority: SocketAddr) -> TcpToHbone:
        """Every connection to `authority`, in a stream on `pool`'s connections for `key`."""
        route = fixed_route(key, authority)
        flow = OutboundFlow(
            route=lambda app, dst: route, identity=key.source, open_tunnel=pool.open
        )
        return cls(flow, authority)

    async def start(self, listen: SocketAddr, *, reuse_port: bool = False) -> SocketAddr:
        """`reuse_port`: join an SO_REUSEPORT group (one listener per worker process)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AppSide(self), str(listen.ip), listen.port, backlog=1024,
            reuse_port=reuse_port,
        )  # fmt: skip
        port = self._server.sockets[0].getsockname()[1]
        return SocketAddr(listen.ip, port)

    def _spawn(self, app: HeldTcp) -> None:
        task = asyncio.ensure_future(self._carry(app))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _carry(self, app: HeldTcp) -> None:
        assert app.transport is not None
        peer = from_sockaddr(app.transport.get_extra_info("peername"))
        try:
            outcome = await self.flow.carry(app, peer, self.destination)
        except Exception:  # a bug in the opener: the flow reset the app; say where, once
            log.exception("forwarding a connection from %s failed", peer)
            return
        if outcome.flags != OK:
            self.refused.append(outcome)
        self.results.append(outcome)

    async def close(self) -> None:
        """Stop listening; live connections are reset (neither side saw a complete stream)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
