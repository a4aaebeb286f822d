"""TCP ↔ TCP splice on the callback-driven TCP side, on asyncio and uvloop: half-close each way,
resets each way, bytes the StreamReaders held before the splice, backpressure, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from tests.proxy.helpers import LOOPS, read_all, rst, run
from zt.proxy.relay import TCP_WRITE_HIGH
from zt.proxy.splice import SpliceResult, splice

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connected() -> tuple[Streams, Streams]:
    """A loopback connection as two stream pairs: (the proxy's end, the remote end)."""
    accepted: asyncio.Queue[Streams] = asyncio.Queue()

    async def on_accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        remote = await asyncio.open_connection("127.0.0.1", port)
        local = await asyncio.wait_for(accepted.get(), 5)
    finally:
        server.close()
    return local, remote


@contextlib.asynccontextmanager
async def spliced() -> AsyncIterator[tuple[Streams, Streams, asyncio.Task[SpliceResult]]]:
    """app ↔ [splice] ↔ upstream: yields the app's streams, the upstream's, the splice task."""
    (app_side, app), (up_side, up) = await _connected(), await _connected()
    task = asyncio.ensure_future(splice(app_side, up_side))
    try:
        yield app, up, task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for _, writer in (app, up):
            writer.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_app_fin_first_then_upstream_answers(loop: str) -> None:
    async def body() -> None:
        async with spliced() as (app, up, task):
            app[1].write(b"x" * 300_000)
            app[1].write_eof()
            assert await read_all(up[0]) == b"x" * 300_000  # EOF came through
            up[1].write(b"reply after your FIN")
            up[1].write_eof()
            assert await read_all(app[0]) == b"reply after your FIN"
            result = await asyncio.wait_for(task, 5)
            assert result == SpliceResult(300_000, 20, "closed")

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_upstream_fin_first_then_app_keeps_sending(loop: str) -> None:
    async def body() -> None:
        async with spliced() as (app, up, task):
            up[1].write(b"hello, then FIN")
            up[1].write_eof()
            assert await read_all(app[0]) == b"hello, then FIN"
            app[1].write(b"sent after reading EOF")
            app[1].write_eof()
            assert await read_all(up[0]) == b"sent after reading EOF"
            result = await asyncio.wait_for(task, 5)
            assert result == SpliceResult(22, 15, "closed")

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("who", ["app", "upstream"])
def test_a_reset_on_either_side_resets_the_other(loop: str, who: str) -> None:
    async def body() -> None:
        async with spliced() as (app, up, task):
            app[1].write(b"abc")
            assert await up[0].readexactly(3) == b"abc"
            resetter, other = (app, up) if who == "app" else (up, app)
            rst(resetter[1])
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(other[0].read(100), 5)
            assert (await asyncio.wait_for(task, 5)).outcome == "reset"

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_and_fin_read_before_the_splice_are_kept(loop: str) -> None:
    """The node peeks/handshakes with StreamReaders first: what they buffered (data and the
    FIN) is passed on before the splice reads the socket itself."""

    async def body() -> None:
        (app_side, app), (up_side, up) = await _connected(), await _connected()
        app[1].write(b"early bytes")
        app[1].write_eof()
        assert await app_side[0].readexactly(2) == b"ea"  # the node consumed a prefix
        await asyncio.sleep(0.1)  # the rest and the FIN now sit in the StreamReader
        task = asyncio.ensure_future(splice(app_side, up_side))
        assert await asyncio.wait_for(read_all(up[0]), 5) == b"rly bytes"
        up[1].write_eof()
        assert await read_all(app[0]) == b""
        assert await asyncio.wait_for(task, 5) == SpliceResult(9, 0, "closed")
        for _, writer in (app, up):
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_cancelling_the_splice_resets_both_sides(loop: str) -> None:
    async def body() -> None:
        async with spliced() as (app, up, task):
            app[1].write(b"x")
            assert await up[0].readexactly(1) == b"x"
            task.cancel()
            for reader, _ in (app, up):
                with pytest.raises(ConnectionResetError):
                    await asyncio.wait_for(reader.read(100), 5)

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_upstream_stops_app_reads_and_bounds_buffering(loop: str) -> None:
    """The upstream does not read: the app's push stalls with at most a few MiB in flight (the
    splice stops reading once the upstream's write buffer passes its high mark); every byte
    arrives once it reads."""
    total = 40 << 20

    async def body() -> None:
        (app_side, app), (up_side, up) = await _connected(), await _connected()
        sock = up[1].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        task = asyncio.ensure_future(splice(app_side, up_side))
        payload = os.urandom(total)  # aperiodic: a reused buffer overwritten early would show
        sent = 0

        async def push() -> None:
            nonlocal sent
            while sent < total:
                app[1].write(payload[sent : sent + (1 << 16)])
                await app[1].drain()
                sent += 1 << 16
            app[1].write_eof()

        pusher = asyncio.ensure_future(push())
        await asyncio.sleep(1.0)
        stalled_at = sent
        held = up_side[1].transport.get_write_buffer_size()
        await asyncio.sleep(0.5)
        assert sent == stalled_at, "the app kept sending: no backpressure"
        assert stalled_at < 24 << 20, f"{stalled_at} bytes left the app before it stalled"
        assert held <= TCP_WRITE_HIGH + (256 << 10)  # the mark plus one read at most
        digest = hashlib.sha256()
        received = 0
        while data := await up[0].read(1 << 20):
            received += len(data)
            digest.update(data)
        await asyncio.wait_for(pusher, 30)
        assert received == total
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        up[1].write_eof()
        assert (await asyncio.wait_for(task, 5)).outcome == "closed"
        for _, writer in (app, up):
            writer.close()

    run(body(), timeout=60, loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reset_before_the_splice_starts_resets_the_other_side(loop: str) -> None:
    """The app resets while the node is still dialing: its transport is already closed when the
    splice starts (uvloop refuses calls on it), and the upstream gets a reset, not a FIN."""

    async def body() -> None:
        (app_side, app), (up_side, up) = await _connected(), await _connected()
        app[1].write(b"doomed")
        await app[1].drain()
        rst(app[1])
        await asyncio.sleep(0.1)  # the RST lands in the app side's StreamReader
        result = await asyncio.wait_for(splice(app_side, up_side), 5)
        assert result.outcome == "reset"
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(up[0].read(100), 5)
        up[1].close()

    run(body(), loop=loop)
