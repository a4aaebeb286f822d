"""Relay conformance over a real zt pair on loopback: every close order, resets, a slow reader.

app → zt client relay → HBONE (mTLS, HTTP/2) → zt server relay → target. docs/design.md §2: TCP FIN →
DATA with END_STREAM; END_STREAM → shutdown(SHUT_WR); RST_STREAM (NO_ERROR/CANCEL) after END_STREAM
is EOF, not an error; a TCP reset → RST_STREAM.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    LOOPS,
    SERVER_ID,
    Pki,
    closed_port,
    echo_handler,
    read_all,
    rst,
    run,
    zt_pair,
)
from zt.addr import SocketAddr
from zt.proxy.flow import UPSTREAM_FAILURE
from zt.proxy.forward import TcpToHbone
from zt.proxy.pool import PoolKey


def test_small_echo_byte_exact(pki: Pki) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await read_all(reader))
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            payload = os.urandom(64)
            writer.write(payload)
            writer.write_eof()
            assert await read_all(reader) == payload
            writer.close()

    run(body())


@pytest.mark.parametrize("loop", LOOPS)
def test_app_fin_first_then_target_answers(pki: Pki, loop: str) -> None:
    """The app half-closes; the target still sees every byte, then EOF, and can still answer."""
    seen: asyncio.Future[bytes]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await read_all(reader)  # returns only at the END_STREAM-turned-FIN
        seen.set_result(data)
        writer.write(b"reply after your FIN")
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def body() -> None:
        nonlocal seen
        seen = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            payload = os.urandom(300_000)
            writer.write(payload)
            writer.write_eof()
            assert await read_all(reader) == b"reply after your FIN"
            assert await seen == payload
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_target_fin_first_then_app_keeps_sending(pki: Pki, loop: str) -> None:
    """The target half-closes first; the app reads EOF and can still send to the target."""
    late: asyncio.Future[bytes]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello, then FIN")
        writer.write_eof()
        await writer.drain()
        late.set_result(await read_all(reader))
        writer.close()

    async def body() -> None:
        nonlocal late
        late = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            assert await read_all(reader) == b"hello, then FIN"
            writer.write(b"sent after reading EOF")
            writer.write_eof()
            await writer.drain()
            assert await asyncio.wait_for(late, 5) == b"sent after reading EOF"
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_simultaneous_fin(pki: Pki, loop: str) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"T" * 1000)
        writer.write_eof()
        await writer.drain()
        got = await read_all(reader)
        assert got == b"A" * 1000
        writer.close()

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"A" * 1000)
            writer.write_eof()
            assert await read_all(reader) == b"T" * 1000
            writer.close()
            await asyncio.sleep(0.1)
            assert [r.error for r in pair.forwarder.results] == [""]

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_full_duplex_8mib_each_way(pki: Pki, loop: str) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send() -> None:
            for i in range(8):
                writer.write(bytes([i]) * (1 << 20))
                await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        digest = hashlib.sha256(await read_all(reader)).hexdigest()
        await sender
        writer.close()
        got_up.set_result(digest)

    got_up: asyncio.Future[str]

    async def body() -> None:
        nonlocal got_up
        got_up = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            up = os.urandom(8 << 20)

            async def send() -> None:
                writer.write(up)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            down = await read_all(reader)
            await sender
            assert down == b"".join(bytes([i]) * (1 << 20) for i in range(8))
            assert await got_up == hashlib.sha256(up).hexdigest()
            writer.close()

    run(body(), timeout=60, loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_app_reset_reaches_target_as_reset(pki: Pki, loop: str) -> None:
    """TCP RST at the app → RST_STREAM(CONNECT_ERROR) → RST at the target (RFC 9113 §8.5)."""
    outcome: asyncio.Future[str]
    got_first: asyncio.Future[None]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(3) == b"abc"
        got_first.set_result(None)
        try:
            rest = await reader.read(100)
            outcome.set_result(f"eof:{rest!r}")
        except ConnectionResetError:
            outcome.set_result("reset")
        writer.close()

    async def body() -> None:
        nonlocal outcome, got_first
        loop = asyncio.get_running_loop()
        outcome, got_first = loop.create_future(), loop.create_future()
        async with zt_pair(pki, target) as pair:
            _, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"abc")
            await asyncio.wait_for(got_first, 5)
            rst(writer)
            assert await asyncio.wait_for(outcome, 5) == "reset"
            await asyncio.sleep(0.05)
            assert [r.error for r in pair.forwarder.results] == ["tcp_reset"]

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_target_reset_reaches_app_as_reset(pki: Pki, loop: str) -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        writer.write(b"partial")
        await writer.drain()
        await asyncio.sleep(0.05)
        rst(writer)

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"go")
            assert await reader.readexactly(7) == b"partial"
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_reset_after_target_fin_resets_app(pki: Pki, loop: str) -> None:
    """A target that FINs and then RSTs while the app still sends: the app ends with a reset,
    not a hang (the RST of the target reaches the app after its EOF)."""

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"done")
        writer.write_eof()
        await writer.drain()
        await reader.readexactly(1)
        rst(writer)

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            assert await read_all(reader) == b"done"
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.3)
            with pytest.raises(ConnectionError):
                for _ in range(50):  # bounded: the reset shows on a write or a read
                    writer.write(b"more")
                    await writer.drain()
                    await asyncio.sleep(0.02)
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_connection_loss_resets_the_app(pki: Pki, loop: str) -> None:
    """When the HBONE connection dies, every relayed TCP connection is reset (not FIN'd: the byte
    stream is incomplete)."""

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(5)
        writer.close()

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"hi")
            await writer.drain()
            await asyncio.sleep(0.2)
            pair.client.close("test kills the connection")
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_app_data_and_fin_before_the_tunnel_is_up_are_kept(pki: Pki, loop: str) -> None:
    """The app writes and half-closes at once, before the CONNECT is answered: nothing is lost."""
    seen: asyncio.Future[bytes]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(await read_all(reader))
        writer.close()

    async def body() -> None:
        nonlocal seen
        seen = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"early bytes")
            writer.write_eof()
            assert await asyncio.wait_for(seen, 5) == b"early bytes"
            assert await read_all(reader) == b""
            writer.close()

    run(body(), loop=loop)


def test_200_concurrent_tunnels_stay_byte_exact(pki: Pki) -> None:
    """Many tunnels multiplexed on pooled HBONE connections, each with its own random payload,
    all 200 open at once (each waits for the others before its FIN): ≤ 100 streams per client
    connection (docs/design.md §2), so the pool needs exactly 2 on any loop."""

    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            opened = 0
            all_open = asyncio.Event()

            async def one() -> bool:
                nonlocal opened
                payload = os.urandom(256 * 1024)
                reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
                writer.write(payload)
                await writer.drain()
                got = await reader.readexactly(len(payload))  # the tunnel is up and echoing
                opened += 1
                if opened == 200:
                    all_open.set()
                await all_open.wait()
                writer.write_eof()
                rest = await read_all(reader)
                writer.close()
                return got == payload and rest == b""

            assert all(await asyncio.gather(*(one() for _ in range(200))))
            assert pair.server.connections_accepted == 2
            assert pair.pool.dials == 2

    run(body(), timeout=120)


def test_refused_tunnel_resets_the_app_connection(pki: Pki) -> None:
    """A non-200 answer never becomes a clean FIN at the app: it is a reset (the app must not
    mistake a refused tunnel for an empty reply)."""

    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            closed = SocketAddr.parse(f"127.0.0.1:{closed_port()}")
            key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), pair.hbone)
            forwarder = TcpToHbone.via(pair.pool, key, closed)
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(reader.read(10), 5)
                writer.close()
                [refusal] = forwarder.refused
                assert refusal.flags == UPSTREAM_FAILURE and "503" in refusal.error
            finally:
                await forwarder.close()

    run(body())


@pytest.mark.parametrize("loop", LOOPS)
def test_server_shutdown_deadline_resets_both_ends(pki: Pki, loop: str) -> None:
    """Past the drain deadline, live tunnels are cut: RST at the app and at the target, never a
    FIN that would look like a complete stream."""
    target_outcome: asyncio.Future[str]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(b"ok")
        try:
            rest = await reader.read(100)
            target_outcome.set_result(f"eof {rest!r}")
        except ConnectionResetError:
            target_outcome.set_result("reset")

    async def body() -> None:
        nonlocal target_outcome
        target_outcome = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"ok"
            await pair.server.shutdown(0.3)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
            assert await asyncio.wait_for(target_outcome, 5) == "reset"
            writer.close()

    run(body(), loop=loop)


def test_slow_target_bounds_buffering_on_the_upload_path(pki: Pki) -> None:
    """The mirror case: the target does not read; the app's push stalls and the zt server holds
    at most one stream window."""
    total = 40 << 20
    start_reading = asyncio.Event()
    received: asyncio.Future[int]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        received.set_result(len(await read_all(reader)))
        writer.close()

    async def body() -> None:
        nonlocal received
        received = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            _, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            sent = 0

            async def push() -> None:
                nonlocal sent
                chunk = b"u" * (1 << 16)
                while sent < total:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                writer.write_eof()

            pusher = asyncio.ensure_future(push())
            await asyncio.sleep(1.0)
            stalled_at = sent
            buffered = [
                s.buffered + s.unacknowledged
                for d in pair.server.drivers
                for s in d.streams.values()
            ]
            await asyncio.sleep(0.5)
            assert sent == stalled_at, "the app kept sending: no backpressure"
            assert stalled_at < 24 << 20
            assert buffered and max(buffered) <= 4 << 20
            start_reading.set()
            await asyncio.wait_for(pusher, 30)
            assert await asyncio.wait_for(received, 30) == total
            writer.close()

    run(body(), timeout=60)
