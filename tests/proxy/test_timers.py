"""The driver runs the core's timers (`next_deadline`/`on_timer`) on the event loop, and the server
answers malformed CONNECTs through the core — checked against raw h2 peers over real TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events

from tests.proxy.helpers import LOOPBACK, Pki, run, tcp_server, zt_dial, zt_server
from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.tls import client_context, server_context
from zt.proxy.client import open_tunnel

FAST = HboneSettings(ping_interval=0.2, ping_timeout=0.5)


@contextlib.asynccontextmanager
async def mute_h2_server(pki: Pki) -> AsyncIterator[SocketAddr]:
    """Completes TLS, sends its HTTP/2 preface, then never reads or answers anything."""
    held: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        held.append(writer)  # keep the socket open, read nothing

    server = await asyncio.start_server(
        handler, str(LOOPBACK.ip), 0, ssl=server_context(pki.server)
    )
    try:
        yield SocketAddr.parse(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()


def test_unanswered_ping_drops_the_connection(pki: Pki) -> None:
    async def body() -> None:
        async with mute_h2_server(pki) as addr:
            driver = await zt_dial(pki, addr, settings=FAST)
            started = time.monotonic()
            await asyncio.wait_for(driver.closed, 5)
            elapsed = time.monotonic() - started
            assert driver.close_reason == "ping_timeout"
            assert 0.6 <= elapsed < 2.0, elapsed  # ping at 0.2 s, no answer for 0.5 s

    run(body())


def test_answered_pings_keep_an_idle_connection_alive(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki, settings=FAST) as (_, addr):
            driver = await zt_dial(pki, addr, settings=FAST)
            await asyncio.sleep(1.5)  # several ping rounds
            assert driver.alive
            driver.close()

    run(body())


def test_core_idle_timeout_closes_an_unused_connection(pki: Pki) -> None:
    idle = HboneSettings(idle_timeout=0.3)

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (_, addr):
            driver = await zt_dial(pki, addr, settings=idle)
            stream = await open_tunnel(driver, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            stream.reset(0x8)
            await asyncio.wait_for(driver.closed, 3)
            assert driver.close_reason == "idle_timeout"

    run(body())


def test_malformed_connect_gets_400_and_the_connection_survives(pki: Pki) -> None:
    """A CONNECT with `:path` (docs/design.md §2: no :scheme, :path, :protocol) is answered 400 by
    the server; a well-formed one on the same connection still gets 200."""

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            ctx = client_context(pki.client)
            reader, writer = await asyncio.open_connection(
                str(addr.ip), addr.port, ssl=ctx, server_hostname=""
            )
            assert isinstance(writer.get_extra_info("ssl_object"), ssl.SSLObject)
            config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
            conn = h2.connection.H2Connection(config)
            conn.initiate_connection()
            bad = [(":method", "CONNECT"), (":authority", f"127.0.0.1:{echo.port}")]
            conn.send_headers(1, [*bad, (":path", "/")])
            conn.send_headers(3, bad)
            writer.write(conn.data_to_send())
            statuses: dict[int, str] = {}
            deadline = time.monotonic() + 5
            while len(statuses) < 2 and time.monotonic() < deadline:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "server closed the connection"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = {k.decode(): v.decode() for k, v in event.headers}
                        statuses[event.stream_id] = headers[":status"]
                writer.write(conn.data_to_send())
            assert statuses == {1: "400", 3: "200"}
            assert server.statuses == {200: 1}  # the 400 came from the core, before admission
            writer.close()

    run(body())
