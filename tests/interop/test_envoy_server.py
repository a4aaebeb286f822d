"""Envoy 1.40 as the HBONE server, zt as the client (docs/design.md §2, §7 "interop").

Envoy: TLS 1.3 listener requiring a client certificate whose URI SAN starts with
spiffe://cluster.local/, HCM with `allow_connect`, a `connect_matcher` route to an ORIGINAL_DST
cluster keyed by `:authority`. It advertises 16 KiB frames: zt must split its DATA accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop import targets
from tests.interop.conftest import CLIENT_ID, SERVER_ID, TD, InteropPki
from tests.interop.envoy import Envoy, hbone_server_config, run_envoy
from tests.proxy.helpers import read_all
from tests.proxy.test_flows import listening
from zt.addr import SocketAddr
from zt.hbone.baggage import Baggage
from zt.hbone.request import ConnectRequest
from zt.identity.certs import WorkloadCert
from zt.identity.errors import PeerIdentityMismatch, TlsError
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context
from zt.node.flows import Reported
from zt.proxy.client import dial, open_tunnel
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import StreamResetError, TunnelRefused
from zt.proxy.flow import Observer
from zt.proxy.forward import fixed_route
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.stream import HboneStream
from zt.proxy.tls import server_peer_check
from zt.state.route import Route
from zt.telemetry.connections import (
    ConnectionInfo,
    ConnectionOutcome,
    ConnectionReport,
    ConnectionTelemetry,
    Peer,
)
from zt.telemetry.metrics import Registry

pytestmark = pytest.mark.envoy

# What Envoy's 200s carry, as a ztunnel's would (its inbound `build_response`).
ENVOY_BAGGAGE = (
    "k8s.cluster.name=c2,k8s.namespace.name=far,k8s.deployment.name=envoy-wl,"
    "service.name=envoy-svc,service.version=v9,cloud.region=r2,cloud.availability_zone=z2"
)


@dataclass(frozen=True)
class Setup:
    envoy: Envoy
    address: SocketAddr
    echo: int
    hello_first: int
    hello_first_got: queue.Queue[bytes]
    reply_after_eof: int
    reply_after_eof_got: queue.Queue[bytes]
    access_log: Path


@pytest.fixture(scope="module")
def setup(interop_pki: InteropPki) -> Iterator[Setup]:
    tls = interop_pki.files(interop_pki.server, "envoy-server")
    hello_q: queue.Queue[bytes] = queue.Queue()
    reply_q: queue.Queue[bytes] = queue.Queue()
    port = targets.free_port()
    access_log = interop_pki.directory / "envoy-srv" / "connects.jsonl"
    config = hbone_server_config(
        port, tls, TD, access_log=access_log, response_baggage=ENVOY_BAGGAGE
    )
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(targets.serve(targets.echo))
        hello = stack.enter_context(targets.serve(targets.hello_first(hello_q)))
        reply = stack.enter_context(targets.serve(targets.reply_after_eof(reply_q)))
        envoy = stack.enter_context(run_envoy(config, interop_pki.directory / "envoy-srv"))
        address = SocketAddr.parse(f"127.0.0.1:{port}")
        yield Setup(envoy, address, echo, hello, hello_q, reply, reply_q, access_log)


def run(coro: object, timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    asyncio.run(bounded())


async def _dial(setup: Setup, cert: WorkloadCert, expect: SpiffeId = SERVER_ID) -> HboneDriver:
    return await dial(setup.address, client_context(cert), peer_check=server_peer_check([expect]))


def _to(port: int) -> ConnectRequest:
    return ConnectRequest(SocketAddr(SocketAddr.parse("127.0.0.1:1").ip, port))


async def _read_all(stream: HboneStream) -> bytes:
    out = bytearray()
    while chunk := await stream.read():
        out += chunk
        stream.acknowledge()
    return bytes(out)


@pytest.mark.parametrize("size", [64, 8 << 20], ids=["64B", "8MiB"])
def test_echo_byte_exact(setup: Setup, interop_pki: InteropPki, size: int) -> None:
    payload = os.urandom(size)

    async def body() -> None:
        driver = await _dial(setup, interop_pki.client)
        try:
            stream = await open_tunnel(driver, _to(setup.echo))

            async def send() -> None:
                await stream.write(payload)
                stream.write_eof()

            sender = asyncio.ensure_future(send())
            got = await _read_all(stream)
            await sender
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
            assert len(got) == size
        finally:
            driver.close()

    run(body())


def test_zt_half_close_first_target_answers_after(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        driver = await _dial(setup, interop_pki.client)
        try:
            stream = await open_tunnel(driver, _to(setup.reply_after_eof))
            await stream.write(b"request, then END_STREAM")
            stream.write_eof()
            assert await _read_all(stream) == b"reply after your FIN"
        finally:
            driver.close()

    run(body())
    assert setup.reply_after_eof_got.get(timeout=5) == b"request, then END_STREAM"


def test_target_half_closes_first(setup: Setup, interop_pki: InteropPki) -> None:
    """The target FINs first. zt delivers its bytes and the EOF exactly. Envoy 1.40 as server then
    ends the whole CONNECT stream (END_STREAM, then RST_STREAM(NO_ERROR), which zt reads as EOF per
    docs/design.md §2) and closes its upstream socket: zt's later bytes cannot reach the target, and zt
    reports that as a reset on the next write, not a hang.
    """

    async def body() -> None:
        driver = await _dial(setup, interop_pki.client)
        try:
            stream = await open_tunnel(driver, _to(setup.hello_first))
            assert await _read_all(stream) == b"hello, then FIN"
            for _ in range(50):  # bounded: Envoy's RST_STREAM follows its END_STREAM
                if stream.was_reset is not None:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(StreamResetError):
                await stream.write(b"sent after END_STREAM from Envoy")
        finally:
            driver.close("done", abort=False)

    run(body())
    assert setup.hello_first_got.get(timeout=5) == b""  # Envoy closed the upstream with FIN


def test_closed_destination_port_is_not_200(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        driver = await _dial(setup, interop_pki.client)
        try:
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, _to(targets.free_port()))
            assert info.value.status != 200
        finally:
            driver.close()

    run(body())


def _bare_context(interop_pki: InteropPki) -> object:
    ctx = client_context(interop_pki.client)
    bare = type(ctx)(ctx.protocol)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=interop_pki.bundle.decode())
    bare.set_alpn_protocols(["h2"])
    return bare


def test_envoy_refuses_zt_client_without_certificate(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        with pytest.raises(TlsError):
            await dial(
                setup.address,
                _bare_context(interop_pki),  # type: ignore[arg-type]
                peer_check=server_peer_check([SERVER_ID]),
            )

    run(body())


@pytest.mark.parametrize("who", ["rogue_client", "foreign_client"])
def test_envoy_refuses_zt_client_of_wrong_ca_or_trust_domain(
    setup: Setup, interop_pki: InteropPki, who: str
) -> None:
    before = setup.envoy.stats("listener.")

    async def body() -> None:
        with pytest.raises(TlsError):
            await _dial(setup, getattr(interop_pki, who))

    run(body())
    after = setup.envoy.stats("listener.")
    failures = sum(
        after.get(k, 0) - before.get(k, 0)
        for k in after
        if k.endswith(("ssl.fail_verify_error", "ssl.fail_verify_san"))
    )
    assert failures >= 1, "Envoy did not count a certificate verification failure"


def test_zt_refuses_envoy_with_unexpected_identity(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        with pytest.raises(PeerIdentityMismatch):
            await _dial(setup, interop_pki.client, SpiffeId(TD, "default", "not-the-server"))

    run(body())


def test_50_concurrent_streams_on_one_connection(setup: Setup, interop_pki: InteropPki) -> None:
    """zt multiplexes tunnels on one connection to Envoy; each echo stays byte-exact."""

    async def body() -> None:
        driver = await _dial(setup, interop_pki.client)
        try:

            async def one() -> bool:
                payload = os.urandom(100_000)
                stream = await open_tunnel(driver, _to(setup.echo))

                async def send() -> None:
                    await stream.write(payload)
                    stream.write_eof()

                sender = asyncio.ensure_future(send())
                got = await _read_all(stream)
                await sender
                return got == payload

            assert all(await asyncio.gather(*(one() for _ in range(50))))
        finally:
            driver.close()

    run(body())


def test_envoy_reads_ztunnels_context_headers_and_zt_reads_envoys_baggage(
    setup: Setup, interop_pki: InteropPki
) -> None:
    """The outbound flow as a node runs it: Envoy's access log shows the `baggage`, `forwarded`
    (`for=` the app, `host=` the service) and `traceparent` zt sent, parsed by Envoy's HTTP/2
    codec; the 200's `baggage` labels the destination zt's state does not know (metrics labels
    and the access log's dst.workload)."""
    names = Baggage("c1", "shop", "frontend", "frontend", "v1", "r1", "z1").header()
    target = SocketAddr.parse(f"127.0.0.1:{setup.echo}")
    telemetry = ConnectionTelemetry(Registry())
    reports: list[ConnectionReport] = []

    def observe(app: SocketAddr, destination: SocketAddr, decided: Route) -> Observer:
        info = ConnectionInfo("outbound", Peer(str(app)), Peer(str(decided.next_hop)))
        reports.append(ConnectionReport(telemetry, info))
        return Reported(reports[-1])

    async def body() -> str:
        pool = HbonePool(lambda key: _dial(setup, interop_pki.client))
        key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), setup.address)
        route = dataclasses.replace(fixed_route(key, target), service="shop/echo.shop.svc")
        flow = OutboundFlow(
            lambda app, dst: route, CLIENT_ID, pool.open, observe=observe, baggage=lambda: names
        )
        try:
            async with listening(flow, target) as app:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"hello")
                writer.write_eof()
                assert await asyncio.wait_for(read_all(reader), 5) == b"hello"
                local = writer.get_extra_info("sockname")
                writer.close()
        finally:
            await pool.close()
        return f"127.0.0.1:{local[1]}"

    app_addr = asyncio.run(asyncio.wait_for(body(), 30))
    logged = _access_logged(setup.access_log, app_addr)
    assert logged["authority"] == str(target)
    assert logged["baggage"] == names
    assert logged["forwarded"] == f'for="{app_addr}";host=echo.shop.svc'
    request = [(b":method", b"CONNECT"), (b":authority", b"1.2.3.4:5")]
    traceparent = (b"traceparent", (logged["traceparent"] or "").encode())
    assert ConnectRequest.parse([*request, traceparent]).traceparent  # a valid W3C one
    [report] = reports
    assert report.labels["destination_workload"] == "envoy-wl"
    assert report.labels["destination_workload_namespace"] == "far"
    assert (report.labels["destination_cluster"], report.labels["destination_zone"]) == ("c2", "z2")
    assert "dst.workload=envoy-svc dst.namespace=far" in telemetry.format(
        report.info, ConnectionOutcome(0, 0, 0.0)
    )


def _access_logged(path: Path, app: str, wait: float = 5.0) -> dict[str, str | None]:
    """Envoy's access-log line (flushed within 50 ms) for the CONNECT `app`'s connection made:
    the one whose `forwarded` names it (other tests' CONNECTs carry none)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                entry: dict[str, str | None] = json.loads(line)
                if f'"{app}"' in (entry.get("forwarded") or ""):
                    return entry
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for a CONNECT from {app} in {path}")
