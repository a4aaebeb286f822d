"""HTTP/2 limits on a real `HboneServer` on loopback, against raw HTTP/2 peers over mTLS: a reset
CONNECT cancels its dial, reading pauses while the peer does not read, oversized frames and
missing prefaces end the connection, and each limit is counted and logged naming the peer."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from tests.proxy.helpers import LOOPBACK, TD, Pki, run, zt_dial
from tests.unit.hbone.frames import PREFACE, decode
from zt.addr import SocketAddr
from zt.hbone.errors import H2_CANCEL, H2_ENHANCE_YOUR_CALM, H2_FRAME_SIZE_ERROR
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings, KiB
from zt.identity.tls import client_context, server_context
from zt.proxy.flow import Connector, connect_direct
from zt.proxy.inbound import InboundFlow
from zt.proxy.server import HboneServer
from zt.proxy.stream import HboneStream
from zt.proxy.tls import client_peer_check

Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TARGET = ipaddress.ip_address("127.0.0.1")


@contextlib.asynccontextmanager
async def server_with(
    pki: Pki,
    *,
    dialer: Connector = connect_direct,
    settings: HboneSettings | None = None,
    dial_timeout: float = 10.0,
) -> AsyncIterator[tuple[HboneServer, SocketAddr, list[str]]]:
    limits: list[str] = []
    server = HboneServer(
        server_context(pki.server),
        peer_check=client_peer_check(TD),
        flow=InboundFlow(connect=dialer, dial_timeout=dial_timeout),
        settings=settings,
        on_limit=limits.append,
    )
    addr = await server.start(LOOPBACK)
    try:
        yield server, addr, limits
    finally:
        await server.shutdown(0.5)


async def raw_client(pki: Pki, addr: SocketAddr, *, rcvbuf: int | None = None) -> Raw:
    """A TLS connection with our client certificate, speaking HTTP/2 by hand."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (str(addr.ip), addr.port))
    return await asyncio.open_connection(
        sock=sock, ssl=client_context(pki.client), server_hostname=""
    )


def connect_frame(stream_id: int, port: int) -> bytes:
    block = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", f"127.0.0.1:{port}")])
    frame = HeadersFrame(stream_id, block)
    frame.flags.add("END_HEADERS")
    return frame.serialize()


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    out = bytearray()
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                out += chunk
    return bytes(out)


async def until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ reset before the answer


def test_a_reset_before_the_answer_cancels_a_slow_dial(pki: Pki) -> None:
    async def body() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow_dialer(target: SocketAddr, timeout: float) -> socket.socket:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("the dial was not cancelled")

        async with server_with(pki, dialer=slow_dialer) as (server, addr, _):
            driver = await zt_dial(pki, addr)
            stream = driver.open_stream(ConnectRequest(SocketAddr(TARGET, 9)))
            await asyncio.wait_for(started.wait(), 10)
            stream.reset(H2_CANCEL)
            await asyncio.wait_for(cancelled.wait(), 10)
            await until(lambda: not server._tasks)
            assert server.statuses == {}  # nothing was answered
            assert not driver.closed.done()  # one reset costs the stream, not the connection
            driver.close()

    run(body())


def test_a_reset_before_the_answer_cancels_a_blackholed_dial(pki: Pki) -> None:
    """A real dial (`connect_direct`) to a listener whose accept queue is full: the SYN is dropped
    and connect() hangs. The reset closes its socket: the fds return to their count (long before
    the 120 s dial timeout would have)."""

    async def body() -> None:
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            port = full.getsockname()[1]
            filler = socket.create_connection(("127.0.0.1", port))  # fills the queue of 1
            try:
                async with server_with(pki, dial_timeout=120) as (server, addr, _):
                    driver = await zt_dial(pki, addr)
                    baseline = open_fds()
                    streams = [
                        driver.open_stream(ConnectRequest(SocketAddr(TARGET, port)))
                        for _ in range(20)
                    ]
                    await until(lambda: open_fds() >= baseline + 20)  # 20 dials in flight
                    for stream in streams:
                        stream.reset(H2_CANCEL)
                    await until(lambda: open_fds() <= baseline and not server._tasks)
                    assert server.statuses == {}
                    driver.close()
            finally:
                filler.close()

    run(body())


def test_rapid_reset_costs_no_dial_and_ends_in_enhance_your_calm(pki: Pki) -> None:
    async def body() -> None:
        dials = 0

        async def counting_dialer(target: SocketAddr, timeout: float) -> socket.socket:
            nonlocal dials
            dials += 1
            await asyncio.sleep(60)
            raise AssertionError("unreachable")

        async with server_with(pki, dialer=counting_dialer) as (server, addr, limits):
            reader, writer = await raw_client(pki, addr)
            attack = b"".join(
                connect_frame(sid, 9) + RstStreamFrame(sid, error_code=H2_CANCEL).serialize()
                for sid in range(1, 2 * 10_000, 2)
            )
            writer.write(PREFACE + SettingsFrame(0).serialize() + attack)
            wire = await read_to_eof(reader)
            writer.close()
            goaways = [f.error_code for f in decode(wire) if isinstance(f, GoAwayFrame)]
            assert goaways == [H2_ENHANCE_YOUR_CALM]
            assert server.limit_hits == {"rapid_reset": 1}
            assert limits == ["rapid_reset"]
            # 10,000 CONNECTs opened and reset: at most the reset budget reached a dialer.
            assert dials <= HboneSettings().max_premature_resets_per_second
            await until(lambda: not server._tasks)

    run(body())


def test_rapid_reset_in_separate_writes_leaves_no_dial_behind(pki: Pki) -> None:
    """CONNECTs in one write, their resets in the next (the server has started the dials), until
    the GOAWAY: every dial is cancelled, also those the GOAWAY cut before their reset came."""

    async def body() -> None:
        async def endless_dialer(target: SocketAddr, timeout: float) -> socket.socket:
            await asyncio.sleep(60)
            raise AssertionError("unreachable")

        async with server_with(pki, dialer=endless_dialer, dial_timeout=120) as (server, addr, _):
            reader, writer = await raw_client(pki, addr)
            writer.write(PREFACE + SettingsFrame(0).serialize())
            with contextlib.suppress(ConnectionError):
                for first in range(1, 2 * 3000, 200):  # at most 30 rounds of 100 streams
                    ids = range(first, first + 200, 2)
                    writer.write(b"".join(connect_frame(sid, 9) for sid in ids))
                    await writer.drain()
                    await asyncio.sleep(0.005)
                    writer.write(b"".join(reset(sid) for sid in ids))
                    await writer.drain()
            await read_to_eof(reader)
            writer.close()
            assert server.limit_hits["rapid_reset"] == 1
            await until(lambda: not server._tasks and not server.drivers)

    run(body())


def reset(stream_id: int) -> bytes:
    return RstStreamFrame(stream_id, error_code=H2_CANCEL).serialize()


# ------------------------------------------------------------------ a peer that does not read


def test_reading_pauses_while_the_peer_does_not_read(pki: Pki) -> None:
    limit = 64 * KiB
    # The control-frame budget would end this flood first: lift it to see the read pause alone.
    settings = HboneSettings(write_buffer_limit=limit, control_frames_per_second=1e9)

    async def body() -> None:
        async with server_with(pki, settings=settings) as (server, addr, limits):
            reader, writer = await raw_client(pki, addr, rcvbuf=4096)
            writer.write(PREFACE + SettingsFrame(0).serialize())
            await until(lambda: len(server.drivers) == 1)
            (driver,) = server.drivers
            assert driver.transport is not None
            sock = driver.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            pings = PingFrame(0, opaque_data=b"p" * 8).serialize() * 1000  # 17 KB a write
            for _ in range(300):  # at most 5 MB of PINGs; the server stops reading long before
                if driver.reading_paused:
                    break
                writer.write(pings)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.drain(), 0.5)
            await until(lambda: driver.reading_paused)
            # (The TLS layer hands records to the TCP transport's own buffer: the count may
            # dip under the low-water mark and pause again; each pause is one hit.)
            assert set(limits) == {"write_buffer"}
            # More PINGs, unread: they wait in the kernel, and the replies queued stay bounded
            # (one read's replies at most beyond the limit: asyncio reads 256 KiB at a time).
            writer.write(pings * 60)
            await asyncio.sleep(0.5)
            assert driver.transport.get_write_buffer_size() < limit + 512 * KiB
            # The peer reads again: the buffer drains and reading resumes.
            drained = asyncio.ensure_future(read_to_eof(reader, timeout=30))
            await until(lambda: not driver.reading_paused, timeout=20)
            writer.close()
            drained.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, OSError):
                await drained

    run(body(), timeout=60)


# ------------------------------------------------------------------ frame size, preface


def test_an_oversized_frame_is_refused_counted_and_logged(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with server_with(pki) as (server, addr, limits):
            reader, writer = await raw_client(pki, addr)
            # A DATA frame header declaring 16 MiB against the advertised 1 MiB; no body follows.
            header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
            writer.write(PREFACE + SettingsFrame(0).serialize() + header)
            wire = await read_to_eof(reader)
            writer.close()
            goaways = [f.error_code for f in decode(wire) if isinstance(f, GoAwayFrame)]
            assert goaways == [H2_FRAME_SIZE_ERROR]
            assert server.limit_hits == {"frame_size": 1}
            assert limits == ["frame_size"]

    with caplog.at_level(logging.WARNING, logger="zt.proxy.driver"):
        run(body())
    lines = [r.getMessage() for r in caplog.records if "frame_size" in r.getMessage()]
    assert len(lines) == 1
    assert "spiffe://cluster.local/ns/default/sa/client" in lines[0]


def test_a_peer_without_preface_is_dropped(pki: Pki) -> None:
    settings = HboneSettings(preface_timeout=0.3)

    async def body() -> None:
        async with server_with(pki, settings=settings) as (server, addr, limits):
            reader, writer = await raw_client(pki, addr)  # TLS done, then silence
            await read_to_eof(reader)  # the server closes the connection
            writer.close()
            assert server.limit_hits == {"preface_timeout": 1}
            assert limits == ["preface_timeout"]
            await until(lambda: not server.drivers)

    run(body())


# ------------------------------------------------------------------ waking writers


class H2Client:
    """h2 as a raw client over the TLS stream: our own SETTINGS and window updates, by hand."""

    def __init__(self, raw: Raw, initial_window: int) -> None:
        self.reader, self.writer = raw
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window},
        )
        self.h2.initiate_connection()
        self.received: dict[int, int] = {}
        self.statuses: dict[int, bytes] = {}

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def read_until(self, done: object, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():  # type: ignore[operator]
                chunk = await self.reader.read(1 << 16)
                assert chunk, "the server closed the connection"
                for event in self.h2.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived):
                        self.statuses[event.stream_id] = dict(event.headers)[b":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        self.received[event.stream_id] = self.received.get(
                            event.stream_id, 0
                        ) + len(event.data)
                self.flush()


def test_window_updates_and_settings_wake_exactly_the_writers_that_can_send(pki: Pki) -> None:
    size = 4000
    tunnels = 20

    async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * size)  # waits in the relay: the client's windows are 0
        await reader.read()
        writer.close()

    async def body() -> None:
        upstream = await asyncio.start_server(talker, "127.0.0.1", 0)
        port = upstream.sockets[0].getsockname()[1]
        try:
            async with server_with(pki) as (server, addr, _):
                client = H2Client(await raw_client(pki, addr), initial_window=0)
                for index in range(tunnels):
                    sid = 1 + 2 * index
                    client.h2.send_headers(
                        sid,
                        [(b":method", b"CONNECT"), (b":authority", f"127.0.0.1:{port}".encode())],
                    )
                ids = [1 + 2 * index for index in range(tunnels)]
                client.flush()
                await client.read_until(lambda: len(client.statuses) == tunnels)
                assert set(client.statuses.values()) == {b"200"}
                (driver,) = server.drivers
                await until(lambda: len(driver._stream_blocked) == tunnels)  # all waiting
                # A SETTINGS change that grows no window wakes nobody and sends nothing.
                client.h2.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16_384})
                # One stream's WINDOW_UPDATE: that stream only.
                client.h2.increment_flow_control_window(500, stream_id=1)
                client.flush()
                await client.read_until(lambda: client.received.get(1) == 500)
                assert sum(client.received.values()) == 500
                # Every stream window grows to `size`: 20 x 4000 bytes > the 65,535-byte
                # connection window, so some writers block on the connection window next...
                client.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size})
                client.flush()
                await client.read_until(lambda: sum(client.received.values()) == 65_535)
                # ...and a connection WINDOW_UPDATE lets exactly those finish.
                client.h2.increment_flow_control_window(tunnels * size)
                client.flush()
                await client.read_until(lambda: sum(client.received.values()) == tunnels * size)
                assert client.received == dict.fromkeys(ids, size)
                client.writer.close()
        finally:
            upstream.close()

    run(body())


# ------------------------------------------------------------------ buffers


def test_early_data_waiting_for_a_dial_holds_only_its_payload(pki: Pki) -> None:
    """DATA sent before the answer waits in the stream while the dial runs: as bytes of its own
    payload, never as views pinning the (larger) received chunks."""

    async def body() -> None:
        waiting: list[HboneStream] = []
        release = asyncio.Event()

        async def slow_dialer(target: SocketAddr, timeout: float) -> socket.socket:
            await release.wait()
            raise OSError("refused")

        async with server_with(pki, dialer=slow_dialer) as (server, addr, _):
            serve = server._serve_stream

            def keep(stream: HboneStream) -> None:
                waiting.append(stream)
                serve(stream)

            server._serve_stream = keep  # type: ignore[method-assign]
            driver = await zt_dial(pki, addr)
            stream = driver.open_stream(ConnectRequest(SocketAddr(TARGET, 9)))
            await stream.write(b"a" * 100_000)  # optimistic data before the 200
            await until(lambda: bool(waiting) and waiting[0].buffered == 100_000)
            chunks = [chunk for chunk, _ in waiting[0]._chunks]
            assert all(type(chunk) is bytes for chunk in chunks)
            assert sum(map(len, chunks)) == 100_000
            release.set()
            driver.close()

    run(body())
