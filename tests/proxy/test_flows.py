"""The two flows as every caller uses them: each connection ends in one `Outcome`, told once to
its observer, with the flag, the error and the bytes of what happened on the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    SERVER_ID,
    Pki,
    closed_port,
    read_all,
    run,
    tcp_server,
    zt_dial,
    zt_server,
)
from zt.addr import HostPort, SocketAddr, from_sockaddr
from zt.config import load_document
from zt.errors import ZtError
from zt.hbone.errors import PolicyDenied
from zt.hbone.request import ConnectRequest
from zt.proxy import socks5
from zt.proxy.client import open_tunnel
from zt.proxy.errors import TunnelRefused
from zt.proxy.flow import DENIED, NO_ROUTE, OK, UPSTREAM_FAILURE, Outcome, Progress
from zt.proxy.forward import fixed_route
from zt.proxy.inbound import Admission, Arrival, InboundFlow
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import HeldTcp
from zt.state import Snapshot, UnknownHostname, resolve_inbound
from zt.state.route import Route, RouteKind


class Recorder:
    """Observer and observer factory in one: counts opens, keeps outcomes."""

    def __init__(self) -> None:
        self.opens = 0
        self.outcomes: list[Outcome] = []
        self.baggage: list[str | None] = []

    def __call__(self, *_: object) -> Recorder:
        return self

    def answered(self, baggage: str | None) -> None:
        self.baggage.append(baggage)

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


# -- mesh hostnames: an HBONE `:authority` naming a service, a SOCKS5 domain name ---------------

ECHO_HOST = "echo.test.svc.cluster.local"


def _one_pod_mesh(target_port: int) -> Snapshot:
    """The server pod at 127.0.0.1 behind service echo, port 80 -> the echo server's port."""
    return load_document(
        {
            "workloads": [
                {
                    "uid": "test/server",
                    "name": "server",
                    "namespace": "test",
                    "workloadIps": ["127.0.0.1"],
                    "services": {f"test/{ECHO_HOST}": {80: target_port}},
                }
            ],
            "services": [
                {"name": "echo", "namespace": "test", "hostname": ECHO_HOST, "ports": {80: 1}}
            ],
        },
        "test",
    )


def test_inbound_hostname_authority_is_resolved_by_admit_and_dialed(pki: Pki) -> None:
    """`:authority echo...:80` over a real HBONE connection: admit resolves it to this pod's
    target port (as ztunnel); unknown names and unmapped ports are 503, never a dial."""
    recorder = Recorder()
    arrivals: list[Arrival] = []

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            snapshot = _one_pod_mesh(echo.port)
            pod = snapshot.by_uid["test/server"]

            def admit(arrival: Arrival) -> Admission:
                arrivals.append(arrival)
                assert isinstance(arrival.target, HostPort)
                reached = arrival.local.ip if arrival.local is not None else None
                resolved = resolve_inbound(snapshot, arrival.target, pod, reached)
                return Admission.allow(target=resolved.destination)

            flow = InboundFlow(admit, observe=recorder)
            server.flow = flow
            driver = await zt_dial(pki, addr)
            stream = await open_tunnel(driver, ConnectRequest(HostPort(ECHO_HOST, 80)))
            await stream.write(b"by name")
            stream.write_eof()
            echoed = b""
            while chunk := await asyncio.wait_for(stream.read(), 5):
                echoed += chunk
                stream.acknowledge()
            assert echoed == b"by name"
            for name, port in (("nope.test.svc.cluster.local", 80), (ECHO_HOST, 81)):
                with pytest.raises(TunnelRefused) as info:
                    await open_tunnel(driver, ConnectRequest(HostPort(name, port)))
                assert info.value.status == 503
            driver.close()
            assert flow.statuses == {200: 1, 503: 2}
        assert arrivals[0].target == HostPort(ECHO_HOST, 80)
        ok, unknown, unmapped = recorder.outcomes
        assert ok == Outcome(OK, "", "", 7, 7)
        assert (
            unknown.flags == UPSTREAM_FAILURE and "'nope.test.svc.cluster.local'" in unknown.error
        )
        assert unmapped.flags == UPSTREAM_FAILURE and "port 81" in unmapped.error

    run(body())


def test_inbound_hostname_nobody_resolves_is_503_not_a_dial(pki: Pki) -> None:
    """The default admit (allow all, `zt hbone serve` without a mesh) cannot dial a name."""

    async def never(target: SocketAddr, timeout: float) -> socket.socket:
        raise AssertionError(f"dialed {target}")

    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            server.flow = InboundFlow(connect=never)
            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, ConnectRequest(HostPort(ECHO_HOST, 80)))
            assert (info.value.status, info.value.detail) == (503, "unknown_hostname")
            driver.close()

    run(body())


def test_socks5_domain_name_is_resolved_through_the_mesh_or_refused() -> None:
    """RFC 1928 ATYP 3: a mesh name becomes the address `resolve` gives and is carried like a
    captured connection; a name outside the mesh gets 0x04 (host unreachable)."""
    routed: list[SocketAddr] = []

    async def body() -> None:
        async with tcp_server() as echo:

            def resolve(name: HostPort) -> SocketAddr:
                if name.host != ECHO_HOST:
                    raise UnknownHostname(f"hostname: got {name.host!r}")
                return SocketAddr(echo.ip, echo.port)

            def tcp_route(app: SocketAddr, dst: SocketAddr) -> Route:
                routed.append(dst)
                return _route(RouteKind.TCP, dst)

            flow = OutboundFlow(route=tcp_route, identity=CLIENT_ID, open_tunnel=_no_tunnel)

            async def client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await socks5.serve(flow, r, w, resolve)

            server = await asyncio.start_server(client, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            for name, code in ((ECHO_HOST.upper() + ".", 0), ("elsewhere.example", 4)):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                encoded = name.encode()
                writer.write(b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(encoded)]))
                writer.write(encoded + (80).to_bytes(2, "big"))
                assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\x05\x00"
                answer = await asyncio.wait_for(reader.readexactly(10), 5)
                assert answer[:2] == bytes([5, code])
                if code == 0:
                    writer.write(b"socks by name")
                    writer.write_eof()
                    assert await asyncio.wait_for(read_all(reader), 5) == b"socks by name"
                writer.close()
            server.close()
        assert routed == [SocketAddr(echo.ip, echo.port)]

    run(body())


def test_baggage_and_forwarded_host_cross_a_tunnel_both_ways(pki: Pki) -> None:
    """zt to zt over real HBONE: the outbound flow's CONNECT carries its baggage and
    `forwarded: for="<app>";host=<service>` (the route's service); the inbound flow's 200
    carries the server's baggage, which the outbound observer hears before the open."""
    client_names = "k8s.namespace.name=shop,k8s.deployment.name=frontend"
    server_names = "k8s.namespace.name=shop,k8s.deployment.name=echo,service.name=echo"
    outbound, inbound = Recorder(), Recorder()
    arrivals: list[Arrival] = []

    def admit(arrival: Arrival) -> Admission:
        arrivals.append(arrival)
        return Admission.allow()

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            server.flow = InboundFlow(admit, observe=inbound, baggage=lambda: server_names)
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), addr)
            route = dataclasses.replace(
                fixed_route(key, echo), service="shop/echo.shop.svc.cluster.local"
            )
            flow = OutboundFlow(
                route=lambda app, dst: route,
                identity=CLIENT_ID,
                open_tunnel=pool.open,
                observe=outbound,
                baggage=lambda: client_names,
            )
            async with listening(flow, echo) as app:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"hi")
                writer.write_eof()
                assert await asyncio.wait_for(read_all(reader), 5) == b"hi"
                local = writer.get_extra_info("sockname")
                writer.close()
                for _ in range(100):
                    if outbound.outcomes:
                        break
                    await asyncio.sleep(0.02)
            await pool.close()
        [arrival] = arrivals
        assert arrival.request is not None
        assert arrival.request.baggage == client_names
        assert arrival.request.forwarded_for == f"127.0.0.1:{local[1]}"
        assert arrival.request.forwarded_host == "echo.shop.svc.cluster.local"
        assert outbound.baggage == [server_names]

    run(body())
