"""`dial` failures are typed and bounded in time."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.proxy.helpers import LOOPBACK, Pki, closed_port, run, zt_dial
from zt.addr import SocketAddr
from zt.identity.tls import client_context
from zt.proxy.client import dial
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
