"""The asyncio driver of one TLS connection ↔ one sans-IO `HboneConnection`.

A thin loop: bytes from the transport go into the core, its events go to the `HboneStream`s, its
output goes to the transport, and `on_timer` runs at `next_deadline()`. No protocol decision is made
here. Time comes from `clock` (the loop's monotonic clock by default) so tests can reason about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Literal, cast

from zt.errors import H2_CANCEL, H2_CONNECT_ERROR, ZtError
from zt.hbone import HeldPayload
from zt.hbone import events as ev
from zt.hbone.connection import HboneConnection
from zt.hbone.errors import HboneError
from zt.hbone.limits import WRITE_BUFFER
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.errors import RefusedByPeer
from zt.identity.handshake import tls_error
from zt.identity.spiffe import SpiffeId
from zt.proxy.errors import ConnectionLost, StreamResetError
from zt.proxy.stream import HboneStream
from zt.proxy.tlssocket import TlsSocketTransport
from zt.telemetry.ratelog import RateLimitedLogger

log = logging.getLogger("zt.proxy.driver")
# One line per (limit, peer) per interval: an abusive peer must not turn its frames into logs.
limit_log = RateLimitedLogger(log)

Role = Literal["client", "server"]
# Write-buffer thresholds of the TLS transport: asyncio's 64 KiB default pauses the writer after
# every 1 MiB DATA frame (reads and writes sized to match 1 MiB frames).
WRITE_HIGH = 4 * 1024 * 1024
WRITE_LOW = 1024 * 1024
# Reading from the peer stops while the write buffer holds more than
# `HboneSettings.write_buffer_limit` (8 MiB), and resumes once it drained below the low-water mark.
# Writers stop at the high-water mark (try_write/writable), so what grows the buffer beyond it are
# replies the peer asks for (PING/SETTINGS ACKs, WINDOW_UPDATEs) without reading ours. Not at the
# high-water mark itself: two zt nodes bulk-sending both ways can both be above it at once, and
# if both stopped reading, neither buffer would ever drain.
CLOSE_GRACE = 1.0  # seconds a closing connection gets to flush its GOAWAY before an abort
# Connections ended for abuse (a limit, no preface) are aborted at once, with no CLOSE_GRACE.
_NO_GRACE = frozenset({ev.REASON_LIMIT, ev.REASON_PREFACE_TIMEOUT})
# Checks the TLS peer once the handshake is done; returns its identity or raises a ZtError.
PeerCheck = Callable[[ssl.SSLObject | ssl.SSLSocket | None], SpiffeId]


class HboneDriver(asyncio.Protocol):
    """Runs one HBONE connection. Server role: `on_request(stream)` is called for each CONNECT."""

    def __init__(
        self,
        role: Role,
        *,
        settings: HboneSettings | None = None,
        peer_check: PeerCheck | None = None,
        on_request: Callable[[HboneStream], None] | None = None,
        clock: Callable[[], float] | None = None,
        on_limit: Callable[[str], None] | None = None,
    ) -> None:
        """`on_limit(name)` is called each time the peer goes past a limit (zt/hbone/limits.py
        names): the server aggregates them into counters."""
        self.role = role
        self.loop = asyncio.get_running_loop()
        self.settings = settings or HboneSettings()
        self.clock = clock or self.loop.time
        self._peer_check = peer_check
        self._on_request = on_request
        self.streams: dict[int, HboneStream] = {}
        self.core: HboneConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: SpiffeId | None = None  # set by peer_check after the handshake
        self.ready: asyncio.Future[SpiffeId | None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.close_reason = ""
        self.goaway = False
        self.idle_since = self.clock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._paused = False
        self._lost = False  # connection_lost() ran: the transport is not to be touched again
        self._wake_turn = 0  # round robin over streams waiting for the TLS buffer (resume_writing)
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._corked = False  # writes wait for uncork() (see cork())
        self._on_limit = on_limit
        self.reading_paused = False  # see write_buffer_limit (next to WRITE_HIGH)
        self._transport_reading = True
        # The core stopped at its frames-per-call budget: the rest is handled in a later
        # iteration of the loop, with reading paused meanwhile (other connections run between).
        self._continuing = False
        # Streams whose last send was cut short by flow control, in the order they blocked (a
        # dict as an ordered set): blocked on the connection window, or on their own stream
        # window. A WINDOW_UPDATE wakes only those that can now send.
        self._conn_blocked: dict[int, None] = {}
        self._stream_blocked: set[int] = set()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # A write_buffer_limit under WRITE_HIGH lowers the marks too: reading resumes only from
        # resume_writing, which needs a pause_writing before it.
        high = min(WRITE_HIGH, self.settings.write_buffer_limit)
        self.transport.set_write_buffer_limits(high=high, low=min(WRITE_LOW, high // 4))
        try:
            if self._peer_check is not None:
                self.peer = self._peer_check(transport.get_extra_info("ssl_object"))
        except Exception as exc:  # a refused identity (ZtError) or a broken check: no connection
            self._fail_ready(exc)
            self.transport.abort()
            return
        self.core = HboneConnection(self.role, now=self.clock(), settings=self.settings)
        self._flush()
        self._arm_timer()
        if self.role == "server":
            self.ready.set_result(self.peer)

    def data_received(self, data: bytes) -> None:
        if self.core is None:
            return
        if not self.ready.done():
            # Client: the server's first bytes (its SETTINGS) prove it accepted our certificate;
            # in TLS 1.3 a refusal of the client certificate only shows up after the handshake.
            self.ready.set_result(self.peer)
        self._receive(data)
        if self._more_input() and not self._continuing:
            self._continuing = True
            self.loop.call_soon(self._continue_input)
        self._sync_reading()

    def _continue_input(self) -> None:
        """The next `max_frames_per_call` frames of what was already received."""
        self._continuing = False
        self.data_received(b"")

    def _more_input(self) -> bool:
        return self.core is not None and not self.closed.done() and self.core.input_pending

    def _receive(self, data: bytes) -> None:
        assert self.core is not None
        # Cork: what the events cause (answers, WINDOW_UPDATEs, relayed END_STREAMs) leaves in one
        # write below, i.e. one TLS record and one send instead of one per action.
        corked = self.cork()
        try:
            self._handle(self.core.receive_data(data, self.clock()))
        finally:
            if corked:
                self.uncork()
        self._arm_timer()
        self._check_write_buffer()

    def _sync_reading(self) -> None:
        """Read from the transport unless the write buffer is over its limit or a backlog waits."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want = not self.reading_paused and not self._more_input()
        if want != self._transport_reading:
            self._transport_reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport: HTTP/2 has no half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        while self._more_input():  # what the peer sent before it closed still counts
            self._receive(b"")
        if not self.ready.done():
            self._fail_ready(self._refusal(exc))
        if self.core is not None and not self.closed.done():
            self._handle(self.core.transport_closed(self.clock()))
        self._terminate(self.close_reason or (f"transport error: {exc}" if exc else "peer closed"))

    def _refusal(self, exc: Exception | None) -> ZtError:
        """Why the connection ended before the peer's first HTTP/2 bytes. TLS 1.3 clients finish
        their handshake before the server checks their certificate, so a refusal of our
        certificate shows up here as an alert or a bare close."""
        if exc is not None:
            return tls_error(exc, peer=f"HBONE {'server' if self.role == 'client' else 'client'}")
        return RefusedByPeer(
            "HBONE server closed the connection right after the TLS handshake "
            "(it refused our certificate or identity)"
        )

    def pause_writing(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume_writing(self) -> None:
        self._paused = False
        self._resumed.set()
        if self.reading_paused:
            self.reading_paused = False
            self._sync_reading()
        # Callback-driven writers wait for this too. Each may refill the buffer, so start one
        # stream further every time: the first streams must not take every resume.
        streams = list(self.streams.values())
        self._wake_turn = (self._wake_turn + 1) % max(len(streams), 1)
        for stream in streams[self._wake_turn :] + streams[: self._wake_turn]:
            stream.wake_writer()

    def _check_write_buffer(self) -> None:
        """Stop reading while the peer does not read what it asked for (see WRITE_HIGH): its
        PINGs and SETTINGS then wait in the kernel, unanswered, and the ping timeout ends it."""
        transport = self.transport
        if not self._paused or self.reading_paused or transport is None:
            return
        limit = self.settings.write_buffer_limit
        if transport.is_closing() or transport.get_write_buffer_size() <= limit:
            return
        self.reading_paused = True
        self._sync_reading()
        self._limit_hit(WRITE_BUFFER, f"write buffer over {limit} bytes: reading paused")

    def _limit_hit(self, limit: str, detail: str) -> None:
        peer = self.peer if self.peer is not None else "?"
        address = self.transport.get_extra_info("peername") if self.transport else None
        limit_log.warning(
            f"{limit}:{peer}", "HBONE peer %s at %s: %s limit: %s", peer, address, limit, detail
        )
        if self._on_limit is not None:
            self._on_limit(limit)

    # -- used by HboneStream ----------------------------------------------------------------
    @property
    def write_paused(self) -> bool:
        """The TLS transport's write buffer is above its high-water mark: send nothing more."""
        return self._paused

    async def writable(self) -> None:
        """Wait while the TLS transport's write buffer is above its high-water mark."""
        # Another writer woken by the same resume may have filled the buffer again: re-check,
        # or each would add a whole window on top of the high-water mark.
        while self._paused and not self.closed.done():
            await self._resumed.wait()

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        core = self._core_or_raise()
        try:
            sent = core.send_data(stream_id, data)
        except HboneError:
            # The stream is closed on the wire (e.g. the peer's RST_STREAM(NO_ERROR) after its
            # END_STREAM, RFC 9113 §8.1): nothing more can be sent on it.
            raise StreamResetError(stream_id, H2_CANCEL) from None
        self._flush()
        return sent

    def send_window(self, stream_id: int) -> int:
        return self._core_or_raise().send_window(stream_id)

    @property
    def holds(self) -> bool:
        """The transport takes held payloads (splice into kTLS, zt/proxy/zerocopy.py)."""
        transport = self.transport
        return isinstance(transport, TlsSocketTransport) and transport.holds

    @property
    def max_frame_size(self) -> int:
        return self._core_or_raise().max_outbound_frame_size

    def send_held(self, stream_id: int, payload: HeldPayload) -> None:
        """One DATA frame whose payload the transport splices (the caller sized it to the
        windows and the frame size)."""
        core = self._core_or_raise()
        try:
            core.send_held(stream_id, payload)
        except HboneError:
            raise StreamResetError(stream_id, H2_CANCEL) from None
        self._flush()

    def blocked(self, stream_id: int) -> None:
        """A send on `stream_id` was cut short by flow control: wake it when it can send."""
        core = self.core
        if core is None or stream_id not in self.streams:
            return
        if core.connection_send_window() <= 0:
            self._conn_blocked.pop(stream_id, None)  # to the end of the queue
            self._conn_blocked[stream_id] = None
        else:
            self._stream_blocked.add(stream_id)

    def acknowledge(self, stream_id: int, n: int) -> None:
        if self.core is None or self.transport is None:
            return
        try:
            self.core.acknowledge(stream_id, n)
        except HboneError:
            return  # the stream closed meanwhile: nothing to open
        self._flush()

    def end_stream(self, stream_id: int) -> None:
        core = self._core_or_raise()
        try:
            core.end_stream(stream_id)
        except HboneError:
            self._reset_local(stream_id, H2_CANCEL)
        self._flush()
        self.forget_if_finished(stream_id)
        self._arm_timer()

    def reset_stream(self, stream_id: int, code: int) -> None:
        if self.core is not None and self.transport is not None and not self.closed.done():
            with contextlib.suppress(HboneError):  # already closed on the wire
                self.core.reset_stream(stream_id, code)
            self._flush()
        self._forget(stream_id)
        self._arm_timer()

    # -- client / server API ----------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """True while new streams may be opened here (alive, no GOAWAY, under the stream limit)."""
        core = self.core
        return (
            core is not None
            and not self.closed.done()
            and not self.goaway
            and core.can_open_stream()
        )

    @property
    def alive(self) -> bool:
        return self.core is not None and not self.closed.done() and not self.goaway

    def open_stream(self, request: ConnectRequest) -> HboneStream:
        """Client: send the CONNECT; await `stream.response` for the status."""
        core = self._core_or_raise()
        stream_id = core.open_stream(request)
        stream = HboneStream(self, stream_id, request)
        self.streams[stream_id] = stream
        self._flush()
        self._arm_timer()
        return stream

    def respond(
        self, stream: HboneStream, status: int, reason: str = "", baggage: str | None = None
    ) -> None:
        """Server: answer a CONNECT (non-200 ends the stream; a 200 may carry `baggage`). A
        stream the client already reset gets no answer: the reset is raised to the caller."""
        core = self._core_or_raise()
        if stream.was_reset is not None:
            raise stream.was_reset
        core.respond(stream.stream_id, status, reason, baggage)
        stream.answered = True
        if status != 200:
            stream.local_ended = True
            stream.deliver_eof()
            self._forget(stream.stream_id)
        self._flush()
        self._arm_timer()

    def start_drain(self, deadline: float) -> None:
        """Send GOAWAY; the core ends the connection when streams finish or at now + deadline."""
        if self.core is None or self.closed.done():
            return
        now = self.clock()
        self.core.start_drain(now, now + deadline)
        self._flush()
        self._arm_timer()

    def close(self, reason: str = "closed", *, abort: bool = True) -> None:
        """End the connection now; live streams are reset. `abort=False` first writes what is
        queued (a GOAWAY, a last END_STREAM) and TLS close_notify. A connection that already
        ended keeps the reason it ended with."""
        if not self.closed.done():
            self.close_reason = reason
        if not abort and self._transport_open():
            self._write_out()  # even while corked: nothing is written after close()
        self._end_transport(abort=abort)
        self._terminate(reason)

    # -- internals --------------------------------------------------------------------------
    def _core_or_raise(self) -> HboneConnection:
        if self.core is None or self.closed.done():
            raise ConnectionLost(self.close_reason or "connection not established")
        return self.core

    def _flush(self) -> None:
        if not self._corked:
            self._write_out()

    def cork(self) -> bool:
        """Hold writes until `uncork()`: what a burst of actions queues (an answer and early
        data, DATA and END_STREAM replayed at a relay's start) leaves in one TLS record and one
        send (per-tunnel cost, docs/PERFORMANCE.md). Returns False when already corked: then the outer
        holder uncorks."""
        if self._corked:
            return False
        self._corked = True
        return True

    def uncork(self) -> None:
        self._corked = False
        self._write_out()

    def _write_out(self) -> None:
        # A TLS transport whose socket died is not `is_closing()` until close() is called on it:
        # check `closed` too, or late acknowledgements would write into a dead socket.
        if (
            self.core is None
            or self.transport is None
            or self.transport.is_closing()
            or self.closed.done()
        ):
            return
        # writelines: DATA payloads go to the TLS layer by reference (zt/hbone/_h2.py fast path).
        transport = self.transport
        if isinstance(transport, TlsSocketTransport) and transport.holds:
            held = self.core.output()  # may hold spliced payloads (zt/proxy/zerocopy.py)
            if held:
                transport.write_chunks(held)
            return
        chunks = self.core.chunks_to_send()
        if chunks:
            transport.writelines(chunks)

    def _handle(self, events: list[ev.Event]) -> None:
        for event in events:
            match event:
                case ev.DataReceived(stream_id, data, flow_controlled):
                    self._on_data(stream_id, data, flow_controlled)
                case ev.WindowOpened(stream_id, all_streams):
                    self._on_window(stream_id, all_streams)
                case ev.ConnectRequested(stream_id, request):
                    self._on_connect(stream_id, request)
                case ev.ConnectResponded(stream_id, status, reason, baggage):
                    self._on_response(stream_id, status, reason, baggage)
                case ev.StreamEnded(stream_id):
                    self._on_ended(stream_id)
                case ev.StreamReset():
                    self._on_reset(event)
                case ev.GoAwayReceived():
                    self.goaway = True
                case ev.ConnectionTerminated(reason):
                    self._write_out()  # the GOAWAY, even while corked: close() follows
                    self.close_reason = reason
                    if not self._transport_open():
                        pass
                    elif reason in _NO_GRACE:
                        # An abusive peer gets no grace: during a TLS close the transport keeps
                        # reading whatever it sends (measured: ~0.7 MB per refused connection).
                        # The GOAWAY went to the socket in the write above.
                        self._end_transport(abort=True)
                    else:
                        self._end_transport(abort=False)  # after the queued GOAWAY is written...
                        # ...unless the peer stopped reading (a ping timeout): then cut it.
                        self.loop.call_later(CLOSE_GRACE, self._end_transport, True)
                    self._terminate(reason)
                case ev.RequestRejected(stream_id, status, error):
                    log.info("rejected stream %d: %d %s", stream_id, status, error)
                case ev.LimitHit(limit, detail):
                    self._limit_hit(limit, detail)

    def _on_data(self, stream_id: int, data: bytes | memoryview, flow_controlled: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            self.acknowledge(stream_id, flow_controlled)  # nobody will read it: don't leak window
            return
        stream.deliver(data, flow_controlled)

    def _on_window(self, stream_id: int | None, all_streams: bool = False) -> None:
        """Wake the writers that can now send, and only those: the work per WINDOW_UPDATE or
        SETTINGS does not grow with the number of streams that cannot."""
        if stream_id is not None:
            self._conn_blocked.pop(stream_id, None)
            self._stream_blocked.discard(stream_id)
            if (one := self.streams.get(stream_id)) is not None:
                one.wake_writer()
            return
        if all_streams:  # a SETTINGS change (rate-limited by the core)
            waiting, self._stream_blocked = self._stream_blocked, set()
            for blocked_id in waiting:
                self._conn_blocked[blocked_id] = None
        self._wake_connection_blocked()

    def _wake_connection_blocked(self) -> None:
        core = self.core
        while self._conn_blocked and core is not None and core.connection_send_window() > 0:
            stream_id = next(iter(self._conn_blocked))
            del self._conn_blocked[stream_id]
            stream = self.streams.get(stream_id)
            if stream is None:
                continue
            if core.send_window(stream_id) > 0:
                stream.wake_writer()  # a callback writer sends now, spending the window
            else:
                self._stream_blocked.add(stream_id)  # its own window is the limit now

    def _on_connect(self, stream_id: int, request: ConnectRequest) -> None:
        stream = HboneStream(self, stream_id, request)
        self.streams[stream_id] = stream
        if self._on_request is None:
            self.respond(stream, 503, "no handler")
            return
        self._on_request(stream)

    def _on_response(self, stream_id: int, status: int, reason: str, baggage: str | None) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.peer_baggage = baggage
        if not stream.response.done():
            stream.response.set_result((status, reason))
        if status != 200:
            self._forget(stream_id)

    def _on_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.deliver_eof()
            self.forget_if_finished(stream_id)

    def _on_reset(self, event: ev.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if not stream.answered:
            # Reset before we answered (by the peer, or with its connection): stop the admission
            # and dial serving it (CVE-2023-44487: a reset CONNECT must not keep costing a dial).
            stream.cancel_service()
        if event.is_eof:
            stream.deliver_eof()  # RST(NO_ERROR/CANCEL) after END_STREAM is EOF (docs/design.md §2)
            stream.local_ended = True
        else:
            stream.deliver_reset(event.error_code)
        self._forget(event.stream_id)
        if event.is_eof:
            # The peer takes no more DATA (RFC 9113 §8.1): a writer waiting for window must learn
            # it now (its next write reports the reset); no WINDOW_UPDATE will ever wake it.
            stream.wake_writer()

    def _reset_local(self, stream_id: int, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset(code)

    def forget_if_finished(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.finished:
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._conn_blocked.pop(stream_id, None)
        self._stream_blocked.discard(stream_id)
        if self.streams.pop(stream_id, None) is not None and not self.streams:
            self.idle_since = self.clock()

    def _transport_open(self) -> bool:
        return self.transport is not None and not self._lost

    def _end_transport(self, abort: bool) -> None:
        """Close (or abort) the transport, unless its connection is already lost: asyncio's TLS
        transport marks itself closed when the connection is lost, a close() then drops its
        protocol, and any later abort() raises AttributeError (CPython 3.11 sslproto; seen when
        TCP keepalive ended a connection and the connection was closed again afterwards)."""
        if not self._transport_open():
            return
        assert self.transport is not None
        if abort:
            self.transport.abort()
        elif not self.transport.is_closing():
            self.transport.close()

    def _terminate(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.done():
            self._fail_ready(ConnectionLost(reason))
        lost = ConnectionLost(reason)
        for stream in list(self.streams.values()):
            if not stream.answered:
                stream.cancel_service()  # nobody is left to answer
            stream.deliver_reset(H2_CONNECT_ERROR, lost)
        self.streams.clear()
        self._conn_blocked.clear()
        self._stream_blocked.clear()
        self._resumed.set()
        if not self.closed.done():
            self.close_reason = self.close_reason or reason
            self.closed.set_result(None)

    def _fail_ready(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved by whoever awaits it, or logged by nobody

    def _arm_timer(self) -> None:
        if self.core is None or self.closed.done():
            return
        deadline = self.core.next_deadline()
        if deadline == self._timer_at and (deadline is None or self._timer is not None):
            return  # already scheduled for that instant (the common case on the data path)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is None or self.closed.done():
            return
        self._handle(self.core.on_timer(self.clock()))
        self._flush()
        self._arm_timer()
