"""`dial` failures are typed and bounded in time."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.proxy.helpers import LOOPBACK, Pki, closed_port, rst, run, zt_dial, zt_server
from zt.addr import SocketAddr
from zt.identity.tls import client_context
from zt.proxy.client import dial
from zt.proxy.driver import CLOSE_GRACE
from zt.proxy.errors import DialFailed
from zt.proxy.tls import server_peer_check


def test_dial_to_a_closed_port_fails_fast_with_dial_failed(pki: Pki) -> None:
    async def body() -> None:
        target = SocketAddr.parse(f"127.0.0.1:{closed_port()}")
        started = time.monotonic()
        with pytest.raises(DialFailed) as info:
            await zt_dial(pki, target)
        assert time.monotonic() - started < 2
        assert str(target) in str(info.value)

    run(body())


def test_dial_to_a_silent_listener_times_out(pki: Pki) -> None:
    """A listener that accepts TCP but never speaks TLS: DialFailed after `timeout`, not a hang."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def body() -> None:
        server = await asyncio.start_server(silent, str(LOOPBACK.ip), 0)
        target = SocketAddr.parse(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        try:
            started = time.monotonic()
            with pytest.raises(DialFailed) as info:
                await dial(
                    target,
                    client_context(pki.client),
                    peer_check=server_peer_check([pki.server.identity]),
                    timeout=0.3,
                )
            assert 0.25 <= time.monotonic() - started < 2
            assert "0.3 s" in str(info.value)
        finally:
            for writer in held:
                writer.transport.abort()
            server.close()

    run(body())


def test_a_connection_reset_under_the_client_closes_it_quietly(pki: Pki) -> None:
    """A TCP RST under an established HBONE client (what a dead peer's keepalive or a reboot
    gives): the driver ends, closing it again afterwards raises nothing, and the grace-period
    abort that follows a close does not fail in the loop either (asyncio's TLS transport, once
    its connection is lost, must not be closed and then aborted)."""

    async def body() -> tuple[str, list[object]]:
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, ctx: errors.append((ctx.get("message"), ctx.get("exception")))
        )
        async with zt_server(pki) as (_server, addr):
            cut: list[asyncio.StreamWriter] = []

            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                cut.append(writer)
                up_r, up_w = await asyncio.open_connection(str(addr.ip), addr.port)

                async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                    while data := await src.read(65536):
                        dst.write(data)

                await asyncio.gather(pump(reader, up_w), pump(up_r, writer), return_exceptions=True)
                up_w.close()

            middle = await asyncio.start_server(relay, "127.0.0.1", 0)
            port = middle.sockets[0].getsockname()[1]
            driver = await zt_dial(pki, SocketAddr.parse(f"127.0.0.1:{port}"))
            rst(cut[0])  # the client's TCP connection is reset under it
            await asyncio.wait_for(driver.closed, 5)
            driver.close()
            await asyncio.sleep(CLOSE_GRACE + 0.3)
            middle.close()
            return driver.close_reason, list(errors)  # before the teardown cancels the relay

    reason, errors = run(body(), timeout=20)
    assert reason == "transport_closed"
    assert errors == []
