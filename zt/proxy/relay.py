"""Relay bytes between a TCP connection (asyncio streams) and an HBONE stream.

docs/design.md §2 byte semantics, implemented here:
  "TCP FIN → DATA with END_STREAM; END_STREAM → `shutdown(SHUT_WR)`; RST_STREAM (NO_ERROR/CANCEL)
  after END_STREAM is EOF, not an error; a TCP reset → RST_STREAM. Acknowledge received DATA
  (WINDOW_UPDATE) only after the bytes were written to the local socket (backpressure)."
RFC 9113 §8.5: "A proxy treats any error in the TCP connection, which includes receiving a TCP
segment with the RST bit set, as a stream error of type CONNECT_ERROR" and "a proxy that receives a
RST_STREAM with CONNECT_ERROR [...] MUST send a TCP segment with the RST bit set".

Both directions run in callbacks, no task per direction (docs/PERFORMANCE.md: "Fewer syscalls and copies on
the TCP side"): `TcpRelay` is the TCP transport's protocol (tcpside.py: `recv_into` a reused,
adaptively sized buffer) and the HBONE stream's sink. TCP reads go to `try_write` in the same
call; when the windows or the TLS buffer are full, the rest is kept and TCP reading pauses until
the stream is writable. Stream chunks go to `transport.write` in the driver's receive call and are
acknowledged at once while the TCP write buffer is below its high-water mark, else when it has
drained to its low mark (`resume_writing`): zt holds at most one stream window per direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass

from zt.errors import H2_CANCEL, H2_CONNECT_ERROR
from zt.hbone import HeldPayload
from zt.proxy import zerocopy
from zt.proxy.errors import StreamResetError
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import Handover, TcpSide

# The TCP side's write-buffer thresholds: room for a couple of 1 MiB frames before drain() waits
# (asyncio's 64 KiB default stalls the relay after every large frame).
TCP_WRITE_HIGH = 2 * 1024 * 1024
TCP_WRITE_LOW = 512 * 1024


@dataclass(frozen=True)
class RelayResult:
    """How a relay ended: byte counts each way and which side reset, if any."""

    tcp_to_stream: int
    stream_to_tcp: int
    outcome: str  # "closed" | "tcp_reset" | "stream_reset"


def reset_tcp_transport(transport: asyncio.WriteTransport) -> None:
    """Close with RST instead of FIN: SO_LINGER on with a zero timeout, then close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # uvloop's pseudo-socket raises ValueError once its fd is gone
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def set_tcp_write_limits(transport: asyncio.WriteTransport) -> None:
    if not transport.is_closing():  # uvloop raises on a closed transport
        transport.set_write_buffer_limits(high=TCP_WRITE_HIGH, low=TCP_WRITE_LOW)


def reset_tcp(writer: asyncio.StreamWriter) -> None:
    reset_tcp_transport(writer.transport)


class TcpRelay(TcpSide):
    """The TCP side of one relay and the sink of its HBONE stream: both directions run in
    callbacks (TCP reads → `try_write`; stream chunks → `transport.write`).

    Two ways in: `relay()` takes asyncio streams over; or (tunnel set-up without a
    StreamReader or a task) the transport is created with this protocol (`create_server`,
    `create_connection(sock=...)`), which keeps early bytes until `begin(stream)`. `done` holds
    the outcome; `result()` the byte counts."""

    def __init__(self) -> None:
        super().__init__()
        self._stream: HboneStream | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.outcome: str | None = None
        self.up_ended = False  # TCP FIN passed on as END_STREAM
        self.down_ended = False  # END_STREAM passed on as shutdown(SHUT_WR)
        self.pending: bytes | memoryview = b""  # TCP bytes the windows did not take yet
        self.eof_pending = False  # TCP FIN seen while `pending` waits
        # TCP → stream by splice(2) (zt/proxy/zerocopy.py): the pipe, a dup of the TCP socket's
        # fd that the loop watches instead of the transport reading, and whether it does.
        self._pipe: zerocopy.Pipe | None = None
        self._app_fd = -1
        self._watching = False

    @property
    def stream(self) -> HboneStream:
        stream = self._stream
        assert stream is not None, "begin(stream) first"
        return stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        set_tcp_write_limits(self.transport)

    def begin(self, stream: HboneStream, handover: Handover | None = None) -> None:
        """Relay between this TCP side and `stream`: what the peer sent before goes out first."""
        self._stream = stream
        if self.transport is not None:  # adopted or bound: connection_made did not set them
            set_tcp_write_limits(self.transport)
        corked = stream.driver.cork()  # replayed bytes and FIN leave in one record
        try:
            stream.attach(self)
            if self.outcome is None:
                if zerocopy.enabled() and stream.driver.holds and self.transport is not None:
                    self._splice_begin(self.transport)
                self.start(handover)
        finally:
            if corked:
                stream.driver.uncork()

    def result(self) -> RelayResult:
        stream = self.stream
        return RelayResult(stream.bytes_out, stream.bytes_in, self.outcome or "cancelled")

    def reset(self) -> None:
        """End the relay with resets on both sides (RST_STREAM(CONNECT_ERROR), TCP RST), as a
        TCP error would: e.g. a policy change revoked the connection. `done` says "tcp_reset"."""
        self._finish("tcp_reset")

    def cancel(self) -> None:
        """Shutdown: neither side saw a complete stream, so both are reset."""
        self.outcome = self.outcome or "cancelled"
        self.end_splice()
        if self._stream is not None:
            self._stream.reset(H2_CANCEL)
        if self.transport is not None:
            reset_tcp_transport(self.transport)
        if not self.done.done():
            self.done.cancel()

    # -- TCP → stream ---------------------------------------------------------------------------
    def on_data(self, data: memoryview) -> None:
        if self.outcome is None:
            # The one copy out of the reused read buffer: immutable bytes, which the core may
            # keep by reference until the TLS layer wrote them (HboneConnection.chunks_to_send).
            self._send(bytes(data))

    def _send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.stream.try_write(data)
        except StreamResetError:
            self._finish("stream_reset")
            return
        if sent < len(data):
            # Windows or the TLS buffer are full: keep the rest (a view of immutable bytes) and
            # stop reading until `stream_writable`.
            self.pending = memoryview(data)[sent:]
            self.pause_reading()

    def on_eof(self) -> None:
        if self.pending:
            self.eof_pending = True
        elif self.outcome is None:
            self._end_up()

    def _end_up(self) -> None:
        try:
            self.stream.write_eof()  # docs/design.md §2: TCP FIN → DATA with END_STREAM
        except StreamResetError:
            self._finish("stream_reset")
            return
        self.up_ended = True
        self._maybe_closed()

    def stream_writable(self) -> None:
        if self.outcome is not None:
            return
        if not self.pending:
            if self._pipe is not None and not self.reading_wanted and not self.eof_seen:
                self.resume_reading()  # splicing waited for a window or the TLS buffer
            return
        data, self.pending = self.pending, b""
        self._send(data)
        if self.pending or self.outcome is not None:
            return
        if self.eof_pending:
            self._end_up()
        else:
            self.resume_reading()

    # -- TCP → stream by splice(2) (zt/proxy/zerocopy.py) ----------------------------------------
    def _splice_begin(self, transport: asyncio.Transport) -> None:
        """uvloop stops reading this socket (it refuses a watch on an fd it owns): the loop
        watches a dup of it, and each readiness splices one DATA payload into the pipe."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        self._app_fd = os.dup(sock.fileno())
        self._pipe = zerocopy.Pipe(self._splice_room)
        transport.pause_reading()

    def socket_reading(self, on: bool) -> None:
        if self._pipe is None:
            super().socket_reading(on)
            return
        loop = self.stream.driver.loop
        if on and not self._watching and self.outcome is None:
            loop.add_reader(self._app_fd, self._splice_once)
            self._watching = True
        elif not on and self._watching:
            loop.remove_reader(self._app_fd)
            self._watching = False

    def _splice_once(self) -> None:
        pipe, stream = self._pipe, self.stream
        assert pipe is not None
        room = min(stream.held_room(), pipe.room)
        if room <= 0:
            self._splice_wait(pipe)
            return
        try:
            got = pipe.fill(self._app_fd, room)
        except (BlockingIOError, InterruptedError):
            if pipe.held:  # no free slot in the pipe (small fragments): wait until it drains
                self._splice_wait(pipe)
            return
        except OSError:
            self._finish("tcp_reset")  # RFC 9113 §8.5: a TCP error is a CONNECT_ERROR
            return
        if got == 0:
            self.socket_reading(False)
            self.eof_received()  # TCP FIN → END_STREAM, after the frames queued before it
            return
        pipe.hold()
        try:
            stream.send_held(HeldPayload(got, pipe))
        except StreamResetError:
            pipe.release()
            self._finish("stream_reset")

    def _splice_wait(self, pipe: zerocopy.Pipe) -> None:
        """Stop reading until there is room: in the pipe (`_splice_room`), in a window or in the
        TLS buffer (`stream_writable`)."""
        self.pause_reading()
        if pipe.room <= 0 or pipe.held:
            pipe.waiting = True
        if not self.stream.driver.write_paused:
            self.stream.driver.blocked(self.stream.stream_id)

    def _splice_room(self) -> None:
        if self.outcome is None and not self.eof_seen and not self.reading_wanted:
            self.resume_reading()

    def end_splice(self) -> None:
        """Stop splicing and close the dup'd fd: before the transport closes or resets the socket
        (the socket is released, and its RST sent, only when its last fd closes)."""
        if self._pipe is None:
            return
        self.socket_reading(False)
        os.close(self._app_fd)
        self._pipe.release()  # queued payloads keep it open until they are sent
        self._pipe = None

    # -- stream → TCP ---------------------------------------------------------------------------
    def stream_data(self, data: bytes | memoryview) -> None:
        if self.outcome is not None or self.transport is None:
            return
        try:
            self.transport.write(data)
        except (OSError, RuntimeError):  # uvloop: RuntimeError on a transport closed meanwhile
            self._finish("tcp_reset")
            return
        if not self.write_paused:
            # docs/design.md §2: Acknowledge received DATA (WINDOW_UPDATE) only after the bytes were
            # written to the local socket: the transport took them and is below its high mark.
            self.stream.acknowledge()

    def on_drained(self) -> None:
        if self.outcome is None:
            self.stream.acknowledge()  # the write buffer fell to its low mark

    def stream_eof(self) -> None:
        if self.outcome is not None or self.down_ended or self.transport is None:
            return
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()  # shutdown(SHUT_WR): the peer's END_STREAM, passed on
        except (OSError, RuntimeError):
            self._finish("tcp_reset")
            return
        self.down_ended = True
        self._maybe_closed()

    def stream_reset(self, error: StreamResetError) -> None:
        # RFC 9113 §8.5: "a proxy that receives a RST_STREAM with CONNECT_ERROR [...] MUST send
        # a TCP segment with the RST bit set" (any reset: the byte stream is incomplete).
        self._finish("stream_reset")

    # -- endings --------------------------------------------------------------------------------
    def on_lost(self, exc: BaseException | None) -> None:
        # A reset, a write error, or someone aborting our transport (e.g. a policy revocation):
        # RFC 9113 §8.5 "A proxy treats any error in the TCP connection [...] as a stream error of
        # type CONNECT_ERROR".
        self._finish("tcp_reset")

    def _maybe_closed(self) -> None:
        if self.up_ended and self.down_ended:
            self._finish("closed")

    def _finish(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.end_splice()
        if outcome == "tcp_reset":
            self.stream.reset(H2_CONNECT_ERROR)
        elif outcome == "closed":
            # The last bytes may sit above the low mark: `close()` still writes them, and the
            # connection window must get them back (a reset returns them in the core instead).
            self.stream.acknowledge()
        if self.transport is not None:
            if outcome == "closed":
                self.transport.close()  # after what is still buffered
            else:
                reset_tcp_transport(self.transport)
        if not self.done.done():
            self.done.set_result(outcome)


async def relay(
    stream: HboneStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> RelayResult:
    """Run both directions until each has ended or one side reset; close the TCP socket. If the
    relay itself is cancelled (shutdown), both sides are reset: neither saw a complete stream.

    The asyncio streams are only the hand-over: their buffered bytes and EOF are relayed first,
    then the transport is driven by `TcpRelay` callbacks (tcpside.py)."""
    set_tcp_write_limits(writer.transport)
    tcp = TcpRelay()
    try:
        tcp.begin(stream, tcp.bind(reader, writer))
        outcome = await tcp.done
    except BaseException:
        tcp.outcome = tcp.outcome or "cancelled"
        tcp.end_splice()
        stream.reset(H2_CANCEL)
        reset_tcp(writer)
        raise
    if outcome != "closed":
        reset_tcp(writer)
    return RelayResult(stream.bytes_out, stream.bytes_in, outcome)
