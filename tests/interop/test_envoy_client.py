"""Envoy 1.40 as the HBONE client, zt as the server (docs/design.md §2, §7 "interop").

Envoy: per route a TCP listener whose `tcp_proxy` tunnels each connection in a CONNECT
(`tunneling_config`) over an HTTP/2 mTLS cluster pointing at the zt server. Envoy sends no
`baggage`/`forwarded`/`traceparent` and 16 KiB frames: zt must accept both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.interop import targets
from tests.interop.conftest import CLIENT_ID, SERVER_ID, TD, InteropPki
from tests.interop.envoy import ClientRoute, Envoy, hbone_client_config, run_envoy
from zt.addr import HostPort, SocketAddr
from zt.identity.errors import ForeignTrustDomain
from zt.identity.tls import server_context
from zt.proxy.inbound import Admission, Arrival, InboundFlow
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check

pytestmark = pytest.mark.envoy

ROUTES = ("echo", "hello", "reply", "closed", "nocert", "rogue", "foreign", "wrongsan", "byname")
# the `byname` route's :authority: a service hostname, as gateways and waypoints send it
BY_NAME = HostPort("echo.interop.svc.cluster.local", 80)


@dataclass(frozen=True)
class Setup:
    envoy: Envoy
    zt_port: int
    listen: dict[str, int]
    hello_got: queue.Queue[bytes]
    reply_got: queue.Queue[bytes]
    echo_port: int


@pytest.fixture(scope="module")
def setup(interop_pki: InteropPki) -> Iterator[Setup]:
    pki = interop_pki
    good = pki.files(pki.client, "envoy-client")
    certs = {
        "rogue": pki.files(pki.rogue_client, "envoy-rogue"),
        "foreign": pki.files(pki.foreign_client, "envoy-foreign"),
    }
    hello_q: queue.Queue[bytes] = queue.Queue()
    reply_q: queue.Queue[bytes] = queue.Queue()
    zt_port = targets.free_port()
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(targets.serve(targets.echo))
        dest = {
            "hello": stack.enter_context(targets.serve(targets.hello_first(hello_q))),
            "reply": stack.enter_context(targets.serve(targets.reply_after_eof(reply_q))),
            "closed": targets.free_port(),
        }
        listen = {name: targets.free_port() for name in ROUTES}
        routes = [
            ClientRoute(
                name=name,
                listen_port=listen[name],
                server_port=zt_port,
                authority=str(BY_NAME) if name == "byname" else f"127.0.0.1:{dest.get(name, echo)}",
                tls=certs.get(name, good),
                expect_san=str(SERVER_ID)
                if name != "wrongsan"
                else f"spiffe://{TD}/ns/default/sa/other",
                present_cert=name != "nocert",
            )
            for name in ROUTES
        ]
        envoy = stack.enter_context(
            run_envoy(hbone_client_config(routes), pki.directory / "envoy-cli")
        )
        yield Setup(envoy, zt_port, listen, hello_q, reply_q, echo)


@contextlib.asynccontextmanager
async def zt_server(setup: Setup, pki: InteropPki, **kw: Any) -> Any:
    server = HboneServer(server_context(pki.server), peer_check=client_peer_check(TD), **kw)
    await server.start(SocketAddr.parse(f"127.0.0.1:{setup.zt_port}"))
    try:
        yield server
    finally:
        await server.shutdown(0.5)


def run(coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def _connect(setup: Setup, route: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", setup.listen[route], limit=1 << 20)


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await reader.read(1 << 20):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("size", [64, 8 << 20], ids=["64B", "8MiB"])
def test_echo_byte_exact(setup: Setup, interop_pki: InteropPki, size: int) -> None:
    seen: list[Arrival] = []

    def admit(arrival: Arrival) -> Admission:
        seen.append(arrival)
        return Admission.allow()

    payload = os.urandom(size)

    async def body() -> None:
        async with zt_server(setup, interop_pki, flow=InboundFlow(admit)) as server:
            reader, writer = await _connect(setup, "echo")

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            got = await _read_all(reader)
            await sender
            writer.close()
            assert len(got) == size
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            assert server.statuses[200] == 1
        # Envoy sends a bare CONNECT: no baggage / forwarded / traceparent.
        [arrival] = seen
        request = arrival.request
        assert arrival.identity == CLIENT_ID and request is not None
        assert (request.baggage, request.forwarded_for, request.traceparent) == (None, None, None)

    run(body())


def test_envoy_hostname_authority_is_parsed_and_resolved_by_admit(
    setup: Setup, interop_pki: InteropPki
) -> None:
    """Envoy's CONNECT with `:authority <hostname>:<port>` reaches admit as a HostPort; the
    address admit resolves it to is what zt dials (docs/design.md §2)."""
    seen: list[Arrival] = []

    def admit(arrival: Arrival) -> Admission:
        seen.append(arrival)
        return Admission.allow(target=SocketAddr.parse(f"127.0.0.1:{setup.echo_port}"))

    async def body() -> None:
        async with zt_server(setup, interop_pki, flow=InboundFlow(admit)) as server:
            reader, writer = await _connect(setup, "byname")
            writer.write(b"to a service by its name")
            writer.write_eof()
            assert await _read_all(reader) == b"to a service by its name"
            writer.close()
            assert server.statuses[200] == 1
        assert [arrival.target for arrival in seen] == [BY_NAME]

    run(body())


def test_app_half_closes_first(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        async with zt_server(setup, interop_pki):
            reader, writer = await _connect(setup, "reply")
            writer.write(b"request, then FIN")
            writer.write_eof()
            assert await _read_all(reader) == b"reply after your FIN"
            writer.close()

    run(body())
    assert setup.reply_got.get(timeout=5) == b"request, then FIN"


def test_target_half_closes_first_app_keeps_sending(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        async with zt_server(setup, interop_pki):
            reader, writer = await _connect(setup, "hello")
            assert await _read_all(reader) == b"hello, then FIN"
            writer.write(b"sent after reading EOF")
            writer.write_eof()
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()

    run(body())
    assert setup.hello_got.get(timeout=5) == b"sent after reading EOF"


def test_closed_destination_port_answers_non_200(setup: Setup, interop_pki: InteropPki) -> None:
    async def body() -> None:
        async with zt_server(setup, interop_pki) as server:
            reader, writer = await _connect(setup, "closed")
            writer.write(b"anyone?")
            with contextlib.suppress(ConnectionResetError):
                assert await _read_all(reader) == b""
            writer.close()
            assert server.statuses == {503: 1}

    run(body())


@pytest.mark.parametrize("route", ["nocert", "rogue", "foreign"])
def test_zt_refuses_envoy_client_without_valid_identity(
    setup: Setup, interop_pki: InteropPki, route: str
) -> None:
    async def body() -> None:
        async with zt_server(setup, interop_pki) as server:
            reader, writer = await _connect(setup, route)
            writer.write(b"let me in")
            with contextlib.suppress(ConnectionResetError):
                assert await _read_all(reader) == b""
            writer.close()
            assert server.connections_accepted == 0
            assert server.tunnels == 0
            if route == "foreign":  # chain trusted: refused by the SPIFFE trust-domain check
                assert any(isinstance(e, ForeignTrustDomain) for e in server.peer_refusals)

    run(body())


def test_envoy_refuses_zt_server_with_unexpected_identity(
    setup: Setup, interop_pki: InteropPki
) -> None:
    before = setup.envoy.stats("cluster.wrongsan.")

    async def body() -> None:
        async with zt_server(setup, interop_pki) as server:
            reader, writer = await _connect(setup, "wrongsan")
            writer.write(b"hello?")
            with contextlib.suppress(ConnectionResetError):
                assert await _read_all(reader) == b""
            writer.close()
            assert server.tunnels == 0

    run(body())
    after = setup.envoy.stats("cluster.wrongsan.")
    key = "cluster.wrongsan.ssl.fail_verify_san"
    assert after.get(key, 0) - before.get(key, 0) >= 1, after


def test_50_concurrent_tunnels_from_envoy(setup: Setup, interop_pki: InteropPki) -> None:
    """Envoy multiplexes 50 tunnels on its HTTP/2 connection(s) to zt; each stays byte-exact."""

    async def body() -> None:
        async with zt_server(setup, interop_pki) as server:

            async def one() -> bool:
                payload = os.urandom(100_000)
                reader, writer = await _connect(setup, "echo")

                async def send() -> None:
                    writer.write(payload)
                    await writer.drain()
                    writer.write_eof()

                sender = asyncio.ensure_future(send())
                got = await _read_all(reader)
                await sender
                writer.close()
                return got == payload

            assert all(await asyncio.gather(*(one() for _ in range(50))))
            assert server.tunnels == 50
            assert server.connections_accepted <= 2  # multiplexed, not one connection per tunnel

    run(body())
