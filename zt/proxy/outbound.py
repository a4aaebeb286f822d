"""The outbound flow: an app's connection and its destination → `route` → a pooled HBONE tunnel,
a plain TCP connection, or a refusal.

One flow for every caller: the node (a connection captured on a pod's :15001, or a SOCKS5 client),
`zt hbone connect` and the bench's client (a fixed route to one HBONE server). What differs is
injected: the decision (`route`, pure), the tunnel opener (a pool), the socket maker (inside the
pod's netns) and the observer (the node's telemetry).

docs/design.md §2 on the relay: "TCP FIN → DATA with END_STREAM; END_STREAM → `shutdown(SHUT_WR)`;
a TCP reset → RST_STREAM". A tunnel that is refused, or a TCP dial that fails, resets the app's
connection: never a clean (empty) FIN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from zt.addr import SocketAddr
from zt.errors import ZtError
from zt.hbone.request import ConnectRequest, new_traceparent
from zt.identity.spiffe import SpiffeId
from zt.proxy.client import DIAL_TIMEOUT
from zt.proxy.errors import TunnelRefused
from zt.proxy.flow import (
    NO_ROUTE,
    OK,
    STATUS_FLAGS,
    UNOBSERVED,
    UPSTREAM_FAILURE,
    Connector,
    Observer,
    Outcome,
    Report,
    connect_direct,
)
from zt.proxy.pool import PoolKey
from zt.proxy.relay import TcpRelay, reset_tcp_transport
from zt.proxy.splice import Splice
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import TcpSource, take, transport_of
from zt.state.route import Route, RouteKind
from zt.telemetry.connections import failure_flag

# (app address, destination) -> how the connection leaves (zt/state/route.py `route`).
Router = Callable[[SocketAddr, SocketAddr], Route]
# A stream on a pooled HBONE connection (`HbonePool.open`); raises TunnelRefused or a ZtError.
TunnelOpener = Callable[[PoolKey, ConnectRequest, float], Awaitable[HboneStream]]
# SOCKS5 answers its client once the upstream works (True) or has failed (False).
Announce = Callable[[bool], None]


def _silent(ok: bool) -> None:
    pass


def _unobserved(app: SocketAddr, destination: SocketAddr, decided: Route) -> Observer:
    return UNOBSERVED


def _no_baggage() -> str | None:
    return None


def _ending(outcome: str) -> str:
    return "" if outcome == "closed" else outcome


@dataclass(frozen=True)
class OutboundFlow:
    """`identity` is the source's: the pool keys its HBONE connections by it (its certificate).
    `baggage` says who the source is on each CONNECT (zt/hbone/baggage.py; None: no header)."""

    route: Router
    identity: SpiffeId
    open_tunnel: TunnelOpener
    connect: Connector = connect_direct
    dial_timeout: float = DIAL_TIMEOUT
    observe: Callable[[SocketAddr, SocketAddr, Route], Observer] = field(default=_unobserved)
    baggage: Callable[[], str | None] = _no_baggage

    async def carry(
        self,
        app: TcpSource,
        peer: SocketAddr,
        destination: SocketAddr,
        announce: Announce = _silent,
    ) -> Outcome:
        """Carry `app` (from `peer`) to `destination` until the connection ends; its observer
        hears of it once. Cancelling resets both sides (zt stops or drains)."""
        decided = self.route(peer, destination)
        report = Report(self.observe(peer, destination, decided))
        # cancelled (zt stops or drains), or a bug: the app is reset and the report says so
        return await report.around(
            self._via(app, peer, decided, report, announce), lambda: _reset(app)
        )

    async def _via(
        self, app: TcpSource, peer: SocketAddr, decided: Route, report: Report, announce: Announce
    ) -> Outcome:
        if decided.kind is RouteKind.REFUSED:
            return _refuse(app, announce, NO_ROUTE, decided.reason)
        if decided.kind is RouteKind.HBONE:
            return await self._via_hbone(app, peer, decided, report, announce)
        return await self._via_tcp(app, decided, report, announce)

    async def _via_hbone(
        self, app: TcpSource, peer: SocketAddr, decided: Route, report: Report, announce: Announce
    ) -> Outcome:
        assert decided.next_hop is not None and decided.authority is not None
        expected = frozenset(SpiffeId.parse(i) for i in decided.expected_identities)
        key = PoolKey(self.identity, expected, decided.next_hop)
        # ztunnel's create_hbone_request: baggage, `forwarded: for="<app>"` plus `;host=` the
        # service the app addressed (its intended_destination_service), a fresh traceparent
        service_host = decided.service.partition("/")[2] if decided.service else None
        request = ConnectRequest(
            decided.authority,
            baggage=self.baggage(),
            forwarded_for=str(peer),
            traceparent=new_traceparent(),
            forwarded_host=service_host or None,
        )
        try:
            stream = await self.open_tunnel(key, request, self.dial_timeout)
        except TunnelRefused as exc:
            return _refuse(app, announce, STATUS_FLAGS.get(exc.status, UPSTREAM_FAILURE), str(exc))
        except ZtError as exc:  # dial, TLS or peer identity failure
            return _refuse(app, announce, failure_flag(exc), str(exc))
        announce(True)
        report.answered(stream.peer_baggage)
        tcp = TcpRelay()
        # originator = the app: towards it is what the stream delivered, from it what it carried
        report.opened(lambda: (stream.bytes_in, stream.bytes_out))
        tcp.begin(stream, take(tcp, app))  # what the app sent meanwhile goes out first
        try:
            ended = await asyncio.shield(tcp.done)
        except asyncio.CancelledError:  # neither side saw a whole stream: reset both
            tcp.cancel()
            raise
        return Outcome(OK, _ending(ended), "", stream.bytes_in, stream.bytes_out)

    async def _via_tcp(
        self, app: TcpSource, decided: Route, report: Report, announce: Announce
    ) -> Outcome:
        hop = decided.next_hop
        assert hop is not None
        try:
            upstream = await self.connect(hop, self.dial_timeout)
        except (OSError, TimeoutError) as exc:
            return _refuse(app, announce, UPSTREAM_FAILURE, f"{hop}: {exc}")
        announce(True)
        spliced = Splice()
        report.opened(spliced.progress)
        result = await spliced.run(app, upstream)  # cancelled: it resets both sides
        return Outcome(OK, _ending(result.outcome), "", result.b_to_a, result.a_to_b)


def _reset(app: TcpSource) -> None:
    transport = transport_of(app)
    if transport is not None:
        reset_tcp_transport(transport)


def _refuse(app: TcpSource, announce: Announce, flags: str, error: str) -> Outcome:
    announce(False)
    _reset(app)
    return Outcome(flags, error)
