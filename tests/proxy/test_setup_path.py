"""The tunnel set-up path (docs/PERFORMANCE.md): TCP sides that are the transport's protocol from the start (no
StreamReader), the driver's cork (one TLS record per burst), the non-blocking upstream dial, and
that none of it changes what the app and the target see."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    LOOPS,
    SERVER_ID,
    Pki,
    closed_port,
    echo_handler,
    forwarder_with,
    read_all,
    rst,
    run,
    tcp_server,
    zt_pair,
)
from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.proxy.driver import HboneDriver
from zt.proxy.flow import connect_direct
from zt.proxy.pool import PoolKey
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import EARLY_LIMIT, TcpSide


class Recorder(TcpSide):
    """A direct-mode TCP side that writes down what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []
        self.made: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.made.set_result(None)

    def on_data(self, data: memoryview) -> None:
        self.seen.append(bytes(data))

    def on_eof(self) -> None:
        self.seen.append("eof")

    def on_lost(self, exc: BaseException | None) -> None:
        self.seen.append(type(exc).__name__ if exc else "lost")

    def on_drained(self) -> None:
        pass

    @property
    def data(self) -> bytes:
        return b"".join(x for x in self.seen if isinstance(x, bytes))


@contextlib.asynccontextmanager
async def recorder_server() -> Any:
    """A listener whose accepted connection gets a `Recorder` as its protocol."""
    sides: list[Recorder] = []

    def factory() -> Recorder:
        sides.append(Recorder())
        return sides[-1]

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sides
    finally:
        server.close()
        for side in sides:
            if side.transport is not None:
                side.transport.abort()


async def settle(seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` (bounded): loaded CI machines are slow, fixed sleeps are flaky."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


# -- direct mode: kept until start(), then replayed in order ------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_direct_mode_keeps_bytes_and_fin_until_start(loop: str) -> None:
    async def body() -> None:
        async with recorder_server() as (port, sides):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"early bytes")
            writer.write_eof()
            await writer.drain()
            await _first(sides)
            [side] = sides
            await until(lambda: side._early_eof)
            assert side.seen == []  # nothing goes anywhere before start()
            side.start()
            assert side.seen == [b"early bytes", "eof"]
            writer.close()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_direct_mode_reads_on_after_start(loop: str) -> None:
    async def body() -> None:
        async with recorder_server() as (port, sides):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.wait_for(asyncio.shield(_first(sides)), 5)
            sides[0].start()  # nothing arrived yet: an empty replay, then live reads
            writer.write(b"later")
            writer.write_eof()
            await writer.drain()
            for _ in range(100):
                if "eof" in sides[0].seen:
                    break
                await settle(0.02)
            assert sides[0].seen == [b"later", "eof"]
            writer.close()

    run(body(), loop=loop)


async def _first(sides: list[Recorder]) -> None:
    while not sides:
        await asyncio.sleep(0.01)
    await sides[0].made


@pytest.mark.parametrize("loop", LOOPS)
def test_direct_mode_reset_before_start_is_reported_as_a_loss_only(loop: str) -> None:
    """A StreamReader holding an error drops its bytes; direct mode does the same."""

    async def body() -> None:
        async with recorder_server() as (port, sides):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"doomed")
            await writer.drain()
            await _first(sides)
            [side] = sides
            await until(lambda: bool(side._early))
            rst(writer)
            await until(lambda: side._early_error is not None)
            assert side.seen == []
            side.start()
            assert side.seen == ["ConnectionResetError"]
            assert side.lost

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_direct_mode_stops_reading_at_the_early_limit(loop: str) -> None:
    """Before start() at most EARLY_LIMIT (plus one read) is kept; the rest waits in the kernel
    and arrives intact once the relay starts."""
    payload = bytes(range(256)) * (3 * EARLY_LIMIT // 256)

    async def body() -> None:
        async with recorder_server() as (port, sides):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.transport.set_write_buffer_limits(high=64 * 1024 * 1024)
            writer.write(payload)
            writer.write_eof()
            await _first(sides)
            [side] = sides
            await until(lambda: len(side._early) >= EARLY_LIMIT)
            await settle(0.2)  # paused: nothing more is read
            kept = len(side._early)
            assert EARLY_LIMIT <= kept <= EARLY_LIMIT + 256 * 1024, kept
            side.start()
            for _ in range(250):
                if "eof" in side.seen:
                    break
                await settle(0.02)
            assert side.data == payload and side.seen[-1] == "eof"
            writer.close()

    run(body(), timeout=60, loop=loop)


# -- through a zt pair ----------------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_target_that_speaks_first_reaches_the_app(pki: Pki, loop: str) -> None:
    """A server-first protocol (a banner before the client says anything): the bytes the target
    sends before the 200 is out are kept by the zt server and follow the 200."""

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hello\r\n")
        await writer.drain()
        await echo_handler(reader, writer)

    async def body() -> None:
        async with zt_pair(pki, banner) as pair:
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            assert await asyncio.wait_for(reader.readexactly(11), 5) == b"220 hello\r\n"
            writer.write(b"QUIT\r\n")
            writer.write_eof()
            assert await asyncio.wait_for(read_all(reader), 5) == b"QUIT\r\n"
            writer.close()
            for _ in range(100):
                if pair.forwarder.results:
                    break
                await settle(0.02)
            [result] = pair.forwarder.results
            assert (result.error, result.from_client, result.to_client) == (
                "",
                6,
                17,
            )

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_app_bytes_and_fin_before_the_tunnel_opens_go_through(pki: Pki, loop: str) -> None:
    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), pair.hbone)
            request = ConnectRequest(SocketAddr(pair.target.ip, pair.target.port))

            async def slow_opener() -> HboneStream:
                await asyncio.sleep(0.2)  # the app's bytes and FIN arrive meanwhile
                return await pair.pool.open(key, request)

            forwarder = forwarder_with(slow_opener)
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"sent before the tunnel existed")
                writer.write_eof()
                got = await asyncio.wait_for(read_all(reader), 5)
                assert got == b"sent before the tunnel existed"
                writer.close()
            finally:
                await forwarder.close()

    run(body(), loop=loop)


class CountingTransport:
    """The driver's real TLS transport, with its `writelines` calls counted."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes = 0

    def writelines(self, chunks: Iterable[bytes | memoryview]) -> None:
        self.writes += 1
        self.inner.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def count_writes(driver: HboneDriver) -> CountingTransport:
    assert driver.transport is not None
    counting = CountingTransport(driver.transport)
    driver.transport = counting  # type: ignore[assignment]
    return counting


@pytest.mark.parametrize("loop", LOOPS)
def test_a_replayed_burst_leaves_in_one_write(pki: Pki, loop: str) -> None:
    """Bytes and FIN the app sent while the tunnel opened go out as DATA + END_STREAM in one
    write to the TLS layer (one record), not one per action."""

    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            counting = count_writes(pair.client)
            key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), pair.hbone)
            request = ConnectRequest(SocketAddr(pair.target.ip, pair.target.port))
            opened = asyncio.Event()
            before: list[int] = []

            async def opener() -> HboneStream:
                stream = await pair.pool.open(key, request)
                await asyncio.sleep(0.2)  # bytes and FIN are kept meanwhile
                before.append(counting.writes)
                opened.set()
                return stream  # the relay begins (and replays) right after this

            forwarder = forwarder_with(opener)
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"burst")
                writer.write_eof()
                await opened.wait()
                assert counting.writes - before[0] == 1
                assert await asyncio.wait_for(read_all(reader), 5) == b"burst"
                writer.close()
            finally:
                await forwarder.close()

    run(body(), loop=loop)


def test_cork_holds_writes_until_uncork(pki: Pki) -> None:
    async def body() -> None:
        async with zt_pair(pki, echo_handler) as pair:
            driver = pair.client
            counting = count_writes(driver)
            request = ConnectRequest(SocketAddr(pair.target.ip, pair.target.port))
            assert driver.cork() is True
            assert driver.cork() is False  # nested: the outer holder uncorks
            first = driver.open_stream(request)
            second = driver.open_stream(request)
            assert counting.writes == 0
            driver.uncork()
            assert counting.writes == 1
            assert (await first.response)[0] == 200 and (await second.response)[0] == 200
            first.reset(0x8)
            second.reset(0x8)

    run(body())


# -- the upstream dial --------------------------------------------------------------------------
@pytest.mark.parametrize("loop", LOOPS)
def test_connect_direct_connects(loop: str) -> None:
    async def body() -> None:
        async with tcp_server() as target:
            sock = await connect_direct(target, 5.0)
            with sock:
                assert sock.getpeername() == (str(target.ip), target.port)
                assert not sock.getblocking()

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_connect_direct_refused_is_an_oserror(loop: str) -> None:
    async def body() -> None:
        closed = SocketAddr(ipaddress.ip_address("127.0.0.1"), closed_port())
        with pytest.raises(ConnectionRefusedError):
            await connect_direct(closed, 5.0)

    run(body(), loop=loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_connect_direct_ipv6(loop: str) -> None:
    async def body() -> None:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
        with listener:
            port = listener.getsockname()[1]
            sock = await connect_direct(SocketAddr(ipaddress.ip_address("::1"), port), 5.0)
            with sock:
                assert sock.getpeername()[:2] == ("::1", port)

    run(body(), loop=loop)
