"""Carry a process's stdin/stdout through one HBONE stream (`zt hbone connect`, like nc).

stdin is read by a daemon thread (a blocked read must not keep the process alive at exit) that
hands each chunk to the loop and waits until the stream took it (backpressure). stdin EOF becomes
END_STREAM; the peer's END_STREAM closes stdout, as a TCP FIN would.
"""

from __future__ import annotations

import asyncio
import os
import threading

from zt.proxy.stream import HboneStream

CHUNK = 256 * 1024


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _start_stdin_reader(
    stream: HboneStream, fd: int, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    done: asyncio.Future[None] = loop.create_future()

    def finish(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                stream.write_eof()
                done.set_result(None)
            else:
                done.set_exception(exc)

    def run() -> None:
        try:
            while data := os.read(fd, CHUNK):
                asyncio.run_coroutine_threadsafe(stream.write(data), loop).result()
        except BaseException as exc:  # handed to the loop, raised there
            loop.call_soon_threadsafe(finish, exc)
            return
        loop.call_soon_threadsafe(finish, None)

    threading.Thread(target=run, name="zt-stdin", daemon=True).start()
    return done


async def _stream_to_stdout(stream: HboneStream, fd: int) -> None:
    while True:
        data = await stream.read()
        if not data:
            os.close(fd)  # the peer's FIN: whoever reads our stdout sees EOF
            return
        await asyncio.to_thread(_write_all, fd, data)
        stream.acknowledge()


async def pump_stdio(stream: HboneStream, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Until both directions ended (a terminal on stdin: until the peer ended)."""
    up = _start_stdin_reader(stream, stdin_fd, asyncio.get_running_loop())
    await _stream_to_stdout(stream, stdout_fd)
    if not os.isatty(stdin_fd):
        await up
