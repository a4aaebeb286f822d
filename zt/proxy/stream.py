"""One HBONE stream as the relay sees it: awaitable reads and writes over the driver's core.

Reads hand out chunks and remember their flow-controlled length; `acknowledge()` turns that into a
WINDOW_UPDATE only when the caller says the local socket took the bytes (DESIGN.md §2: "Acknowledge
received DATA (WINDOW_UPDATE) only after the bytes were written to the local socket"). Writes give
the core what its windows accept and wait for `WindowOpened` for the rest, so zt never buffers more
than the peer's windows.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from zt.hbone.request import ConnectRequest
from zt.proxy.errors import StreamResetError

if TYPE_CHECKING:
    from zt.proxy.driver import HboneDriver


class HboneStream:
    """The asyncio face of one stream id on one `HboneDriver`."""

    def __init__(self, driver: HboneDriver, stream_id: int, request: ConnectRequest) -> None:
        self.driver = driver
        self.stream_id = stream_id
        self.request = request
        self.response: asyncio.Future[tuple[int, str]] = driver.loop.create_future()
        self._chunks: deque[tuple[bytes | memoryview, int]] = deque()
        self._unacked = 0
        self._eof = False
        self._reset: StreamResetError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self.local_ended = False
        self.bytes_in = 0
        self.bytes_out = 0

    # -- called by the driver ---------------------------------------------------------------
    def _feed(self, data: bytes | memoryview, flow_controlled: int) -> None:
        self._chunks.append((data, flow_controlled))
        self._readable.set()

    def _feed_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        self._readable.set()

    def _feed_reset(self, code: int, error: StreamResetError | None = None) -> None:
        if self._reset is None:
            self._reset = error or StreamResetError(self.stream_id, code)
        if not self.response.done():
            self.response.set_exception(self._reset)
            self.response.exception()  # mark retrieved: a refused open is reported by open()
        self._readable.set()
        self._writable.set()

    def _wake_writer(self) -> None:
        self._writable.set()

    @property
    def finished(self) -> bool:
        """Both directions are over (or the stream was reset): the driver may forget it."""
        return self._reset is not None or (self._eof and self.local_ended and not self._chunks)

    # -- the relay's API --------------------------------------------------------------------
    async def read(self) -> bytes | memoryview:
        """Next chunk from the peer; b"" at END_STREAM. Raises StreamResetError on a reset."""
        while not self._chunks:
            if self._eof:
                # The peer ended cleanly (before any later reset): deliver EOF.
                self.driver.forget_if_finished(self.stream_id)
                return b""
            if self._reset is not None:
                raise self._reset
            self._readable.clear()
            await self._readable.wait()
        data, flow_controlled = self._chunks.popleft()
        self._unacked += flow_controlled
        self.bytes_in += len(data)
        return data

    def acknowledge(self) -> None:
        """The local socket took everything read so far: open the peer's window by that much."""
        if self._unacked and self._reset is None:
            n, self._unacked = self._unacked, 0
            self.driver.acknowledge(self.stream_id, n)

    async def write(self, data: bytes | memoryview) -> None:
        """Send all of `data`, waiting for window and transport space as needed."""
        view = memoryview(data)
        while view:
            if self._reset is not None:
                raise self._reset
            await self.driver.writable()
            try:
                sent = self.driver.send_data(self.stream_id, view)
            except StreamResetError as exc:
                self._feed_reset(exc.code, exc)
                raise
            view = view[sent:]
            self.bytes_out += sent
            if sent == 0 and self._reset is None:
                # Windows closed: wait for WindowOpened (no await between the send and the clear,
                # so a window update cannot slip in unseen).
                self._writable.clear()
                await self._writable.wait()

    def write_eof(self) -> None:
        """Local FIN → END_STREAM (DESIGN.md §2: "TCP FIN → DATA with END_STREAM")."""
        if not self.local_ended and self._reset is None:
            self.local_ended = True
            self.driver.end_stream(self.stream_id)

    def reset(self, code: int) -> None:
        """Abort the stream with RST_STREAM(code); pending reads and writes fail."""
        if self._reset is None:
            self.driver.reset_stream(self.stream_id, code)
            self._feed_reset(code)

    @property
    def buffered(self) -> int:
        """Bytes received from the peer and not yet read (bounded by the stream window)."""
        return sum(len(chunk) for chunk, _ in self._chunks)

    @property
    def was_reset(self) -> StreamResetError | None:
        return self._reset
