"""HboneStream semantics against a raw zt server driver: acknowledgement-driven windows and how
RST_STREAM is read (docs/design.md §2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from tests.proxy.helpers import LOOPBACK, TD, Pki, forwarder_with, read_all, run, zt_dial
from zt.addr import SocketAddr
from zt.errors import H2_CANCEL, H2_CONNECT_ERROR, H2_NO_ERROR
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.tls import server_context
from zt.proxy.client import open_tunnel
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import StreamResetError
from zt.proxy.stream import HboneStream
from zt.proxy.tls import client_peer_check

Script = Callable[[HboneStream], None]
REQUEST = ConnectRequest(SocketAddr(SocketAddr.parse("127.0.0.1:1").ip, 7))
WINDOW = 65_535
tasks: set[asyncio.Future[None]] = set()  # keeps scripted server tasks referenced


@contextlib.asynccontextmanager
async def raw_server(
    pki: Pki, script: Script, settings: HboneSettings | None = None
) -> AsyncIterator[SocketAddr]:
    """A server whose every CONNECT is handed to `script` (no admission, no upstream)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HboneDriver(
            "server", settings=settings, peer_check=client_peer_check(TD), on_request=script
        ),
        str(LOOPBACK.ip),
        0,
        ssl=server_context(pki.server),
    )
    try:
        yield SocketAddr.parse(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()


def test_peer_window_reopens_only_after_acknowledge(pki: Pki) -> None:
    """Reading is not acknowledging: the sender stalls at the window until `acknowledge()`."""
    small = HboneSettings(stream_window=WINDOW, connection_window=WINDOW)
    server_streams: list[HboneStream] = []

    def script(stream: HboneStream) -> None:
        stream.driver.respond(stream, 200)
        server_streams.append(stream)

    async def body() -> None:
        async with raw_server(pki, script, small) as addr:
            driver = await zt_dial(pki, addr, settings=small)
            sender = await open_tunnel(driver, REQUEST)
            write = asyncio.ensure_future(sender.write(b"x" * (3 * WINDOW)))
            await asyncio.sleep(0.2)
            [receiver] = server_streams
            got = 0
            while receiver.buffered:  # read everything that arrived, without acknowledging
                got += len(await receiver.read())
            await asyncio.sleep(0.2)
            assert got == WINDOW
            assert receiver.buffered == 0, "bytes crossed after a read without an acknowledgement"
            assert not write.done()
            assert driver.send_window(sender.stream_id) == 0
            receiver.acknowledge()
            for _ in range(2):
                await asyncio.sleep(0.1)
                while receiver.buffered:
                    got += len(await receiver.read())
                receiver.acknowledge()
            await asyncio.wait_for(write, 2)
            assert got == 3 * WINDOW
            driver.close()

    run(body())


@pytest.mark.parametrize("code", [H2_NO_ERROR, H2_CANCEL])
def test_rst_no_error_or_cancel_after_end_stream_is_eof_at_the_app(pki: Pki, code: int) -> None:
    """The server answers, ends its side, then RST_STREAM(NO_ERROR|CANCEL): the app behind the zt
    client relay reads the bytes and a clean EOF, not a reset."""

    def script(stream: HboneStream) -> None:
        async def go() -> None:
            stream.driver.respond(stream, 200)
            await stream.write(b"complete response")
            stream.write_eof()
            stream.reset(code)

        tasks.add(asyncio.ensure_future(go()))

    async def body() -> None:
        async with raw_server(pki, script) as addr:
            driver = await zt_dial(pki, addr)
            forwarder = forwarder_with(lambda: open_tunnel(driver, REQUEST))
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                assert await read_all(reader) == b"complete response"
                writer.close()
            finally:
                await forwarder.close()
                driver.close()

    run(body())


def test_rst_before_end_stream_resets_the_app(pki: Pki) -> None:
    def script(stream: HboneStream) -> None:
        async def go() -> None:
            stream.driver.respond(stream, 200)
            await stream.write(b"partial")
            await asyncio.sleep(0.1)
            stream.reset(H2_CONNECT_ERROR)

        tasks.add(asyncio.ensure_future(go()))

    async def body() -> None:
        async with raw_server(pki, script) as addr:
            driver = await zt_dial(pki, addr)
            forwarder = forwarder_with(lambda: open_tunnel(driver, REQUEST))
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                assert await reader.readexactly(7) == b"partial"
                with pytest.raises(ConnectionResetError):
                    await reader.read(100)
                writer.close()
            finally:
                await forwarder.close()
                driver.close()

    run(body())


def test_write_after_peer_closed_the_stream_raises_instead_of_hanging(pki: Pki) -> None:
    def script(stream: HboneStream) -> None:
        stream.driver.respond(stream, 200)
        stream.write_eof()
        stream.reset(H2_NO_ERROR)

    async def body() -> None:
        async with raw_server(pki, script) as addr:
            driver = await zt_dial(pki, addr)
            stream = await open_tunnel(driver, REQUEST)
            assert await stream.read() == b""
            with pytest.raises(StreamResetError):
                for _ in range(20):  # bounded: the RST_STREAM follows the END_STREAM
                    await stream.write(b"too late")
                    await asyncio.sleep(0.02)
            driver.close()

    run(body(), timeout=10)


def test_upload_waiting_for_window_ends_when_the_peer_closes_the_stream(pki: Pki) -> None:
    """The app uploads more than the window while the server never reads; the server then ends
    its side and sends RST_STREAM(NO_ERROR) (RFC 9113 §8.1 allows it). The relay, waiting for a
    WINDOW_UPDATE that will never come, must end the app's connection instead of hanging."""

    def script(stream: HboneStream) -> None:
        async def go() -> None:
            stream.driver.respond(stream, 200)
            await asyncio.sleep(0.3)  # the client's relay fills the window meanwhile
            stream.write_eof()
            stream.reset(H2_NO_ERROR)

        tasks.add(asyncio.ensure_future(go()))

    async def body() -> None:
        small = HboneSettings(stream_window=WINDOW)
        async with raw_server(pki, script, small) as addr:
            driver = await zt_dial(pki, addr)
            forwarder = forwarder_with(lambda: open_tunnel(driver, REQUEST))
            app = await forwarder.start(LOOPBACK)
            try:
                reader, writer = await asyncio.open_connection(str(app.ip), app.port)
                writer.write(b"u" * (8 * WINDOW))
                with contextlib.suppress(ConnectionResetError):
                    assert await asyncio.wait_for(read_all(reader), 5) == b""
                # its upload was cut: the relay resets the app's connection (a hung relay would
                # stop reading, the socket buffers would fill and drain() would time out)
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    for _ in range(400):  # bounded: at most 26 MiB
                        writer.write(b"u" * WINDOW)
                        await asyncio.wait_for(writer.drain(), 5)
                writer.close()
            finally:
                await forwarder.close()
                driver.close()

    run(body())
