"""The two flows as every caller uses them: each connection ends in one `Outcome`, told once to
its observer, with the flag, the error and the bytes of what happened on the wire."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    Pki,
    closed_port,
    read_all,
    run,
    tcp_server,
    zt_dial,
    zt_server,
)
from zt.addr import SocketAddr, from_sockaddr
from zt.errors import ZtError
from zt.hbone.errors import PolicyDenied
from zt.hbone.request import ConnectRequest
from zt.proxy.client import open_tunnel
from zt.proxy.errors import TunnelRefused
from zt.proxy.flow import DENIED, NO_ROUTE, OK, UPSTREAM_FAILURE, Outcome, Progress
from zt.proxy.inbound import Admission, Arrival, InboundFlow
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import PoolKey
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import HeldTcp
from zt.state.route import Route, RouteKind


class Recorder:
    """Observer and observer factory in one: counts opens, keeps outcomes."""

    def __init__(self) -> None:
        self.opens = 0
        self.outcomes: list[Outcome] = []

    def __call__(self, *_: object) -> Recorder:
        return self

    def opened(self, progress: Progress) -> None:
        self.opens += 1

    def ended(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def _route(kind: RouteKind, hop: SocketAddr | None, reason: str = "") -> Route:
    return Route(kind, hop, None, (), reason)


async def _no_tunnel(key: PoolKey, request: ConnectRequest, timeout: float) -> HboneStream:
    raise AssertionError("no HBONE route in this test")


@asynccontextmanager
async def listening(flow: OutboundFlow, destination: SocketAddr) -> AsyncIterator[SocketAddr]:
    """A listener whose connections `flow` carries to `destination` (held from accept on)."""
    tasks: list[asyncio.Task[Outcome]] = []

    class App(HeldTcp):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            peer = from_sockaddr(transport.get_extra_info("peername"))
            tasks.append(asyncio.ensure_future(flow.carry(self, peer, destination)))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(App, "127.0.0.1", 0)
    try:
        yield SocketAddr(LOOPBACK.ip, server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()


def test_outbound_tcp_route_splices_and_reports_bytes_once() -> None:
    recorder = Recorder()

    async def body() -> None:
        async with tcp_server() as echo:
            flow = OutboundFlow(
                route=lambda app, dst: _route(RouteKind.TCP, dst),
                identity=CLIENT_ID,
                open_tunnel=_no_tunnel,
                observe=recorder,
            )
            async with listening(flow, echo) as addr:
                reader, writer = await asyncio.open_connection(str(addr.ip), addr.port)
                writer.write(b"x" * 1000)  # sent before the route is taken: replayed
                writer.write_eof()
                assert await asyncio.wait_for(read_all(reader), 5) == b"x" * 1000
                writer.close()
                for _ in range(100):
                    if recorder.outcomes:
                        break
                    await asyncio.sleep(0.02)
        assert recorder.opens == 1
        assert recorder.outcomes == [Outcome(OK, "", "", 1000, 1000)]

    run(body())


@pytest.mark.parametrize(
    ("kind", "hop", "flag"),
    [(RouteKind.REFUSED, None, NO_ROUTE), (RouteKind.TCP, "closed", UPSTREAM_FAILURE)],
    ids=["refused-route", "dial-fails"],
)
def test_outbound_refusal_resets_the_app(kind: RouteKind, hop: str | None, flag: str) -> None:
    recorder = Recorder()
    closed = SocketAddr(ipaddress.ip_address("127.0.0.1"), closed_port())

    async def body() -> None:
        flow = OutboundFlow(
            route=lambda app, dst: _route(kind, closed if hop else None, "loop guard: test"),
            identity=CLIENT_ID,
            open_tunnel=_no_tunnel,
            observe=recorder,
        )
        async with listening(flow, closed) as addr:
            reader, writer = await asyncio.open_connection(str(addr.ip), addr.port)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 5)
            writer.close()
        [outcome] = recorder.outcomes
        assert outcome.flags == flag and outcome.error and recorder.opens == 0

    run(body())


def test_inbound_tunnel_denied_is_401_and_one_outcome(pki: Pki) -> None:
    recorder = Recorder()

    def deny(arrival: Arrival) -> Admission:
        return Admission.deny(PolicyDenied("no rule"), policy="ns/deny-all")

    async def body() -> None:
        flow = InboundFlow(deny, observe=recorder)
        async with zt_server(pki) as (server, addr):
            server.flow = flow

            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, ConnectRequest(SocketAddr(addr.ip, 9)))
            assert info.value.status == 401
            driver.close()
        assert flow.statuses == {401: 1}
        [outcome] = recorder.outcomes
        assert (outcome.flags, outcome.policy) == (DENIED, "ns/deny-all")

    run(body())


def test_inbound_plaintext_revoked_by_track_resets_and_says_so() -> None:
    recorder = Recorder()
    revokers: list[Callable[[str], None]] = []

    def track(admission: Admission, revoke: Callable[[str], None]) -> Callable[[], None]:
        revokers.append(revoke)
        return lambda: None

    async def body() -> None:
        async with tcp_server() as echo:
            flow = InboundFlow(observe=recorder, track=track)
            tasks: list[asyncio.Task[Outcome]] = []

            class Client(HeldTcp):
                def connection_made(self, transport: asyncio.BaseTransport) -> None:
                    super().connection_made(transport)
                    source = from_sockaddr(transport.get_extra_info("peername"))
                    arrival = Arrival(source, echo, echo, None)
                    tasks.append(asyncio.ensure_future(flow.plaintext(self, arrival)))

            server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            [revoke] = revokers
            revoke("policy now denies it")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 5)
            [outcome] = await asyncio.gather(*tasks)
            server.close()
            writer.close()
        assert outcome.flags == DENIED and "policy now denies it" in outcome.error
        assert recorder.outcomes == [outcome] and outcome.from_client == 4

    run(body())


def test_a_connector_error_is_answered_with_its_own_status(pki: Pki) -> None:
    class Refused(ZtError):
        http_status = 400
        reason = "not_here"

    async def picky(target: SocketAddr, timeout: float) -> socket.socket:
        raise Refused(f"{target} is not served here")

    recorder = Recorder()

    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            server.flow = InboundFlow(connect=picky, observe=recorder)

            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, ConnectRequest(SocketAddr(addr.ip, 9)))
            assert (info.value.status, info.value.detail) == (400, "not_here")
            driver.close()
        [outcome] = recorder.outcomes
        assert outcome.flags == UPSTREAM_FAILURE and "not served here" in outcome.error

    run(body())
