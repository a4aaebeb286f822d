"""The callback-driven TCP side (docs/PERFORMANCE.md: "buffer reuse, `recv_into`, adaptive buffer sizes like
ztunnel's 1 KiB → 16 KiB → 256 KiB"): the pure sizing rule, the sizes real relays read with, and
memory bounded by windows and write-buffer marks when a reader is slow, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    LOOPS,
    SERVER_ID,
    Pki,
    echo_handler,
    forwarder_with,
    read_all,
    rst,
    run,
    zt_pair,
)
from zt.addr import SocketAddr
from zt.errors import H2_CONNECT_ERROR
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.proxy import relay as relay_module
from zt.proxy.pool import PoolKey
from zt.proxy.relay import TCP_WRITE_HIGH
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import LEVELS, SHRINK_AFTER, ReadSizing, TcpSide

STREAM_WINDOW = HboneSettings().stream_window


# -- the sizing rule (pure) ---------------------------------------------------------------------
def test_full_reads_grow_one_level_at_a_time_to_256_kib() -> None:
    sizing = ReadSizing()
    seen = [sizing.size]
    for _ in range(4):
        sizing = sizing.after_read(sizing.size)  # every read fills the buffer
        seen.append(sizing.size)
    assert seen == [1024, 16384, 262144, 262144, 262144]


def test_small_reads_shrink_back_after_a_streak() -> None:
    sizing = ReadSizing(level=2)
    sizes = []
    for _ in range(2 * SHRINK_AFTER):
        sizing = sizing.after_read(64)
        sizes.append(sizing.size)
    assert sizes == [262144] * (SHRINK_AFTER - 1) + [16384] * SHRINK_AFTER + [1024]


def test_a_read_that_needs_the_current_size_breaks_the_streak() -> None:
    sizing = ReadSizing(level=2)
    for _ in range(SHRINK_AFTER - 1):
        sizing = sizing.after_read(100)
    sizing = sizing.after_read(100_000)  # too big for 16 KiB: stay at 256 KiB, streak reset
    for _ in range(SHRINK_AFTER - 1):
        sizing = sizing.after_read(100)
    assert sizing.size == 262144


@given(st.lists(st.integers(min_value=1, max_value=LEVELS[-1]), max_size=200))
def test_sizes_stay_on_the_ladder_and_full_reads_never_shrink(reads: list[int]) -> None:
    sizing = ReadSizing()
    for wanted in reads:
        nbytes = min(wanted, sizing.size)  # a read never returns more than the buffer
        after = sizing.after_read(nbytes)
        assert after.size in LEVELS
        assert abs(after.level - sizing.level) <= 1
        if nbytes == sizing.size:
            assert after.size >= sizing.size
        sizing = after


# -- the sizes real relays read with --------------------------------------------------------------
def _client_sink(stream: HboneStream) -> TcpSide:
    sink = stream.sink
    assert isinstance(sink, TcpSide), "the relay did not take the TCP side over"
    return sink


@pytest.mark.parametrize("loop", LOOPS)
def test_relay_reads_grow_for_bulk_and_shrink_for_ping_pong(pki: Pki, loop: str) -> None:
    """Observable recv sizes of the zt client's TCP side: 1 KiB for 64-byte messages, 16 KiB
    and 256 KiB during an 8 MiB upload, back to 1 KiB after a few small messages."""
    bulk = 8 << 20

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while header := await reader.readexactly(1):
                size = 64 if header == b"p" else bulk
                data = await reader.readexactly(size)
                writer.write(data[:64])  # answer 64 bytes: the download path stays small
                await writer.drain()
        writer.close()

    async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"p" + b"x" * 64)
        assert await reader.readexactly(64) == b"x" * 64

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            await ping(reader, writer)  # may still be handed over from the StreamReader
            [stream] = pair.client.streams.values()
            side = _client_sink(stream)
            before = side.recv_sizes.get(1024, 0)
            for _ in range(5):
                await ping(reader, writer)
            assert side.recv_sizes == {1024: before + 5}  # one 1 KiB read per message
            writer.write(b"b" + b"y" * bulk)
            assert await reader.readexactly(64) == b"y" * 64
            grown = dict(side.recv_sizes)
            assert grown.get(16384, 0) >= 1 and grown.get(262144, 0) >= 1, grown
            # most of the upload went through 256 KiB reads: few syscalls per MiB
            assert grown[262144] <= bulk // 16384, grown
            for _ in range(2 * SHRINK_AFTER + 1):
                await ping(reader, writer)
            assert side.read_size == 1024, side.recv_sizes
            writer.close()

    run(body(), loop=loop)


# -- memory stays bounded behind a slow reader -------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_slow_app_bounds_zt_memory_to_window_plus_write_buffer(pki: Pki, loop: str) -> None:
    """The target pushes 40 MiB to an app that does not read. The push stalls; what the zt
    client holds for that stream (unacknowledged bytes, its TCP write buffer, unread chunks)
    stays within one stream window plus the TCP high-water mark; nothing is lost afterwards."""
    total = 40 << 20
    chunk = bytes(range(256)) * 256  # 64 KiB
    sent = 0

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readexactly(2)
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def body() -> None:
        async with zt_pair(pki, target) as pair:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (str(pair.app.ip), pair.app.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
            writer.write(b"go")
            await asyncio.sleep(1.0)
            stalled_at = sent
            [stream] = pair.client.streams.values()
            side = _client_sink(stream)
            assert side.transport is not None
            held = side.transport.get_write_buffer_size()
            await asyncio.sleep(0.5)
            assert sent == stalled_at, "the target kept sending: no backpressure"
            assert stalled_at < 24 << 20, f"{stalled_at} bytes left the target before it stalled"
            assert stream.buffered == 0  # nothing waits in the stream: it went to the socket
            assert stream.unacknowledged <= STREAM_WINDOW
            assert side.write_paused, "the TCP write buffer never reached its high-water mark"
            assert TCP_WRITE_HIGH <= held <= STREAM_WINDOW + TCP_WRITE_HIGH
            digest = hashlib.sha256()
            received = 0
            while data := await reader.read(1 << 20):
                received += len(data)
                digest.update(data)
            assert received == total
            assert digest.hexdigest() == hashlib.sha256(chunk * (total // len(chunk))).hexdigest()
            writer.close()

    run(body(), timeout=60, loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_target_stops_the_app_reads_at_the_window(pki: Pki, loop: str) -> None:
    """The mirror case: the target does not read. The zt client stops reading the app once the
    stream window is used up (its pending copy is one read at most); all bytes arrive later."""
    total = 40 << 20
    start_reading = asyncio.Event()
    received: asyncio.Future[bytes]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await start_reading.wait()
        received.set_result(await read_all(reader))
        writer.close()

    async def body() -> None:
        nonlocal received
        received = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            _, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            payload = bytes(range(251)) * (total // 251)
            sent = 0

            async def push() -> None:
                nonlocal sent
                for offset in range(0, len(payload), 1 << 16):
                    writer.write(payload[offset : offset + (1 << 16)])
                    await writer.drain()
                    sent = offset
                writer.write_eof()

            pusher = asyncio.ensure_future(push())
            await asyncio.sleep(1.0)
            stalled_at = sent
            [stream] = pair.client.streams.values()
            side = _client_sink(stream)
            await asyncio.sleep(0.5)
            assert sent == stalled_at, "the app kept sending: no backpressure"
            assert stalled_at < 24 << 20
            assert len(getattr(side, "pending", b"")) <= LEVELS[-1]
            server_streams = [s for d in pair.server.drivers for s in d.streams.values()]
            assert server_streams and all(s.unacknowledged <= STREAM_WINDOW for s in server_streams)
            start_reading.set()
            await asyncio.wait_for(pusher, 30)
            assert await asyncio.wait_for(received, 30) == payload
            writer.close()

    run(body(), timeout=60, loop=loop)


# -- the hand-over and cancellation ----------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_app_reset_before_the_relay_starts_is_a_tcp_reset(pki: Pki, loop: str) -> None:
    """The app resets while the tunnel is still being opened: the StreamReader holds the error,
    and the relay reports it as a TCP reset (RST_STREAM to the peer), never as a clean end."""

    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), pair.hbone)
            request = ConnectRequest(SocketAddr(pair.target.ip, pair.target.port))

            async def slow_opener() -> HboneStream:
                await asyncio.sleep(0.3)  # the app's RST lands in the StreamReader meanwhile
                return await pair.pool.open(key, request)

            forwarder = forwarder_with(slow_opener)
            app = await forwarder.start(LOOPBACK)
            try:
                _, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"doomed")
                await writer.drain()
                rst(writer)
                for _ in range(100):  # bounded wait for the relay's result
                    if forwarder.results:
                        break
                    await asyncio.sleep(0.02)
                [result] = forwarder.results
                assert (result.error, result.from_client) == ("tcp_reset", 0)
            finally:
                await forwarder.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_cancelled_relay_resets_the_app_and_the_target(pki: Pki, loop: str) -> None:
    target_saw: asyncio.Future[str]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(b"ok")
        try:
            rest = await reader.read(100)
            target_saw.set_result(f"eof {rest!r}")
        except ConnectionResetError:
            target_saw.set_result("reset")
        writer.close()

    async def body() -> None:
        nonlocal target_saw
        target_saw = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"ok"
            await pair.forwarder.close()  # cancels the relay task
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
            assert await asyncio.wait_for(target_saw, 5) == "reset"
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_mixed_write_sizes_cross_every_buffer_size_intact(pki: Pki, loop: str) -> None:
    """Writes from 1 byte to 600 KiB with pauses in between make the read buffers grow and
    shrink many times mid-stream, both ways at once: every byte arrives, in order."""
    rng = random.Random(8)
    sizes = [rng.choice((1, 63, 1024, 1025, 16384, 70_000, 262_144, 600_000)) for _ in range(60)]
    payload = rng.randbytes(sum(sizes))

    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)

            async def send() -> None:
                offset = 0
                for size in sizes:
                    writer.write(payload[offset : offset + size])
                    offset += size
                    await writer.drain()
                    if size < 2048:
                        await asyncio.sleep(0.005)  # let small reads happen on their own
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            got = await read_all(reader)
            await sender
            assert len(got) == len(payload)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            writer.close()

    run(body(), timeout=60, loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stream_reset_from_outside_resets_both_tcp_ends(pki: Pki, loop: str) -> None:
    """What a policy revocation does on the node (stream.reset while the relay runs): the app
    and the target both see a TCP reset, and the relay reports it."""
    target_saw: asyncio.Future[str]

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(b"ok")
        try:
            await reader.read(100)
            target_saw.set_result("eof")
        except ConnectionResetError:
            target_saw.set_result("reset")
        writer.close()

    async def body() -> None:
        nonlocal target_saw
        target_saw = asyncio.get_running_loop().create_future()
        async with zt_pair(pki, target) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"ok"
            [stream] = pair.client.streams.values()
            stream.reset(H2_CONNECT_ERROR)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(100), 5)
            assert await asyncio.wait_for(target_saw, 5) == "reset"
            for _ in range(50):
                if pair.forwarder.results:
                    break
                await asyncio.sleep(0.02)
            assert [r.error for r in pair.forwarder.results] == ["stream_reset"]
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_connection_window_comes_back_after_a_paused_stream_ends(
    pki: Pki, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that ends while its TCP write buffer is paused (the app has not read yet) must
    still hand its last bytes back to the connection window, or every such stream shrinks the
    window for all others until the connection stalls. 1 MiB windows, a 64 KiB write mark and
    a small kernel send buffer make that state certain and a leak visible."""
    monkeypatch.setattr(relay_module, "TCP_WRITE_HIGH", 64 * 1024)
    monkeypatch.setattr(relay_module, "TCP_WRITE_LOW", 16 * 1024)
    window = 1 << 20
    small = HboneSettings(stream_window=window, connection_window=window)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.readexactly(1) == b"b":
            writer.write(os.urandom(window))  # one window: sent without any acknowledgement
            writer.write_eof()
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async def body() -> None:
        async with zt_pair(pki, target, settings=small) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            for _ in range(100):  # bounded: the relay starts once the tunnel is up
                if any(s.sink for s in pair.client.streams.values()):
                    break
                await asyncio.sleep(0.01)
            [stream] = pair.client.streams.values()
            side = _client_sink(stream)
            assert side.transport is not None
            zt_sock = side.transport.get_extra_info("socket")
            zt_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            writer.write(b"b")
            writer.write_eof()  # the relay ends as soon as the download has
            for _ in range(100):
                if pair.forwarder.results:
                    break
                await asyncio.sleep(0.02)
            assert [r.error for r in pair.forwarder.results] == [""]
            assert len(await read_all(reader)) == window  # close() still delivered every byte
            writer.close()
            # A new tunnel on the same connection: the server may send most of a window again
            # (h2 withholds WINDOW_UPDATEs below half a window, never more).
            _, writer2 = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            writer2.write(b"i")
            await asyncio.sleep(0.2)
            [driver] = pair.server.drivers
            [stream_id] = driver.streams
            assert driver.send_window(stream_id) > window // 2
            writer2.close()

    run(body(), timeout=60, loop=loop)
