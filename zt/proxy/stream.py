"""One HBONE stream as the relay sees it: awaitable reads and writes over the driver's core.

Reads hand out chunks and remember their flow-controlled length; `acknowledge()` turns that into a
WINDOW_UPDATE only when the caller says the local socket took the bytes (docs/design.md §2: Acknowledge
received DATA (WINDOW_UPDATE) only after the bytes were written to the local socket). Writes give
the core what its windows accept and wait for `WindowOpened` for the rest, so zt never buffers more
than the peer's windows.

Two ways to consume a stream: the awaitable `read()`/`write()` pair, or a `StreamSink` attached with
`attach()` that the driver calls back (no task, no wake-up per chunk: the relay's fast path, docs/PERFORMANCE.md)
and that sends with `try_write()`. A stream uses one or the other, never both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

from zt.errors import H2_CANCEL
from zt.hbone import HeldPayload
from zt.hbone.request import ConnectRequest
from zt.identity.spiffe import SpiffeId
from zt.proxy.errors import StreamResetError


class StreamHost(Protocol):
    """The connection a stream lives on, as the stream and its users see it (zt/proxy/driver.py
    `HboneDriver` is the one implementation). The driver calls the stream's `deliver*`,
    `wake_writer` and `cancel_service`; the stream calls these."""

    loop: asyncio.AbstractEventLoop
    peer: SpiffeId | None  # the peer's identity, checked after the handshake
    transport: asyncio.Transport | None
    closed: asyncio.Future[None]

    @property
    def write_paused(self) -> bool: ...

    async def writable(self) -> None: ...

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int: ...

    def send_window(self, stream_id: int) -> int: ...

    @property
    def holds(self) -> bool: ...

    @property
    def max_frame_size(self) -> int: ...

    def send_held(self, stream_id: int, payload: HeldPayload) -> None: ...

    def blocked(self, stream_id: int) -> None: ...

    def acknowledge(self, stream_id: int, n: int) -> None: ...

    def end_stream(self, stream_id: int) -> None: ...

    def reset_stream(self, stream_id: int, code: int) -> None: ...

    def forget_if_finished(self, stream_id: int) -> None: ...

    def respond(
        self, stream: HboneStream, status: int, reason: str = "", baggage: str | None = None
    ) -> None: ...

    def cork(self) -> bool: ...

    def uncork(self) -> None: ...


class StreamSink(Protocol):
    """Callbacks of an attached consumer. They run inside the driver's receive path: they must not
    raise (a failure is theirs to turn into a reset) and must not block."""

    def stream_data(self, data: bytes | memoryview) -> None:
        """A chunk from the peer; `acknowledge()` once the local socket took it."""

    def stream_eof(self) -> None:
        """The peer's END_STREAM (or RST_STREAM NO_ERROR/CANCEL after it): nothing more comes."""

    def stream_reset(self, error: StreamResetError) -> None:
        """The stream was reset (by the peer, locally, or with its connection)."""

    def stream_writable(self) -> None:
        """A window opened or the TLS write buffer drained: `try_write()` may take more."""


class HboneStream:
    """The asyncio face of one stream id on one `HboneDriver`."""

    def __init__(self, driver: StreamHost, stream_id: int, request: ConnectRequest) -> None:
        self.driver = driver
        self.stream_id = stream_id
        self.request = request
        self.response: asyncio.Future[tuple[int, str]] = driver.loop.create_future()
        # client: the 200's `baggage` (the answering workload's telemetry names), if it had one
        self.peer_baggage: str | None = None
        self._chunks: deque[tuple[bytes | memoryview, int]] = deque()
        self._unacked = 0
        self._eof = False
        self._reset: StreamResetError | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._sink: StreamSink | None = None
        self.local_ended = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.answered = False  # server: respond() was called (the driver sets it)
        self._service: asyncio.Future[Any] | None = None

    def serve_with(self, task: asyncio.Future[Any]) -> None:
        """Server: `task` serves this CONNECT (admission, dial, answer). The driver cancels it
        when the peer resets the stream, or the connection ends, before it was answered: a
        reset CONNECT stops costing a dial (CVE-2023-44487, "rapid reset")."""
        self._service = task
        if self._reset is not None and not self.answered:
            task.cancel()

    def cancel_service(self) -> None:
        if self._service is not None:
            self._service.cancel()
            self._service = None

    # -- called by the driver ---------------------------------------------------------------
    def deliver(self, data: bytes | memoryview, flow_controlled: int) -> None:
        sink = self._sink
        if sink is not None:
            self._unacked += flow_controlled
            self.bytes_in += len(data)
            sink.stream_data(data)
            return
        if type(data) is memoryview:
            # A view pins its whole received chunk (up to PIN_RATIO x the payload, _inbound.py),
            # and queued data may wait a whole dial for its reader: keep only the payload, so
            # the stream window bounds this queue's memory, not just its length.
            data = data.tobytes()
        self._chunks.append((data, flow_controlled))
        self._readable.set()

    def deliver_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        self._readable.set()
        if self._sink is not None:
            self._sink.stream_eof()

    def deliver_reset(self, code: int, error: StreamResetError | None = None) -> None:
        first = self._reset is None
        if self._reset is None:
            self._reset = error or StreamResetError(self.stream_id, code)
        if not self.response.done():
            self.response.set_exception(self._reset)
            self.response.exception()  # mark retrieved: a refused open is reported by open()
        self._readable.set()
        self._writable.set()
        if first and self._sink is not None:
            self._sink.stream_reset(self._reset)

    def wake_writer(self) -> None:
        self._writable.set()
        if self._sink is not None:
            self._sink.stream_writable()

    @property
    def finished(self) -> bool:
        """Both directions are over (or the stream was reset): the driver may forget it."""
        return self._reset is not None or (self._eof and self.local_ended and not self._chunks)

    # -- the callback API (the relay's fast path) -----------------------------------------------
    def attach(self, sink: StreamSink) -> None:
        """From now on hand everything to `sink`: first what arrived before (chunks, then EOF,
        then a reset), then each event as it happens."""
        self._sink = sink
        while self._chunks and self._sink is sink:
            data, flow_controlled = self._chunks.popleft()
            self.deliver(data, flow_controlled)
        if self._eof:
            sink.stream_eof()
            self.driver.forget_if_finished(self.stream_id)
        if self._reset is not None:  # also after EOF, as a later `deliver_reset` would report it
            sink.stream_reset(self._reset)

    def try_write(self, data: bytes | memoryview) -> int:
        """Send what the windows take now, without waiting; returns how many bytes were taken (0
        while the TLS write buffer is above its high-water mark). As with the core's `send_data`,
        the caller must not mutate `data` until it is written: pass immutable bytes. Raises
        StreamResetError on a reset stream."""
        if self._reset is not None:
            raise self._reset
        if self.local_ended:  # our END_STREAM went out, or the peer's RST_STREAM closed the stream
            raise StreamResetError(self.stream_id, H2_CANCEL)
        if self.driver.write_paused:
            return 0
        try:
            sent = self.driver.send_data(self.stream_id, data)
        except StreamResetError as exc:
            self.deliver_reset(exc.code, exc)
            raise
        self.bytes_out += sent
        if sent < len(data) and not self.driver.write_paused:
            self.driver.blocked(self.stream_id)  # flow control: `stream_writable` when it opens
        return sent

    def held_room(self) -> int:
        """How many bytes one held DATA frame may carry now: the windows and the peer's frame size
        (0 while the TLS write buffer is above its high-water mark or a window is closed)."""
        if self._reset is not None or self.local_ended or self.driver.write_paused:
            return 0
        return min(self.driver.send_window(self.stream_id), self.driver.max_frame_size)

    def send_held(self, payload: HeldPayload) -> None:
        """Send one DATA frame whose payload the transport splices (zt/proxy/zerocopy.py), sized
        by `held_room()`. Raises StreamResetError on a reset stream."""
        if self._reset is not None:
            raise self._reset
        try:
            self.driver.send_held(self.stream_id, payload)
        except StreamResetError as exc:
            self.deliver_reset(exc.code, exc)
            raise
        self.bytes_out += len(payload)

    @property
    def sink(self) -> StreamSink | None:
        return self._sink

    @property
    def unacknowledged(self) -> int:
        """Flow-controlled bytes handed out (read or given to the sink) and not yet acknowledged:
        zt's share of the peer's window it still holds (bounded by the stream window)."""
        return self._unacked

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
                self.deliver_reset(exc.code, exc)
                raise
            view = view[sent:]
            self.bytes_out += sent
            if sent == 0 and self._reset is None:
                # Windows closed: wait for WindowOpened (no await between the send and the clear,
                # so a window update cannot slip in unseen).
                self._writable.clear()
                self.driver.blocked(self.stream_id)
                await self._writable.wait()

    def write_eof(self) -> None:
        """Local FIN → END_STREAM (docs/design.md §2: TCP FIN → DATA with END_STREAM)."""
        if not self.local_ended and self._reset is None:
            self.local_ended = True
            self.driver.end_stream(self.stream_id)

    def reset(self, code: int) -> None:
        """Abort the stream with RST_STREAM(code); pending reads and writes fail."""
        if self._reset is None:
            self.driver.reset_stream(self.stream_id, code)
            self.deliver_reset(code)

    @property
    def buffered(self) -> int:
        """Bytes received from the peer and not yet read (bounded by the stream window)."""
        return sum(len(chunk) for chunk, _ in self._chunks)

    @property
    def was_reset(self) -> StreamResetError | None:
        return self._reset
