"""`HboneConnection`: one HTTP/2 connection carrying HBONE tunnels, as a sans-IO state machine.

Bytes in (`receive_data`), events out; bytes to send (`data_to_send`); time is a parameter
(`next_deadline`/`on_timer`). No asyncio, socket, ssl or bcc here (docs/design.md §9).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import Counter
from collections.abc import Callable
from typing import Literal

import h2.events
import h2.exceptions
import hyperframe.exceptions
from h2.connection import ConnectionState
from h2.settings import SettingCodes

from zt.hbone._h2 import Chunk, HboneH2Connection, HeldPayload, new_h2
from zt.hbone.errors import (
    H2_CANCEL,
    H2_CONNECT_ERROR,
    H2_ENHANCE_YOUR_CALM,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    BadConnectRequest,
    ConnectionFull,
    ConnectionNotUsable,
    HboneError,
    HboneUsageError,
    PeerLimitExceeded,
    PeerProtocolError,
    StreamNotWritable,
    UnknownStream,
)
from zt.hbone.events import (
    REASON_DRAIN_DEADLINE,
    REASON_DRAINED,
    REASON_IDLE,
    REASON_LIMIT,
    REASON_PEER_GOAWAY,
    REASON_PING_TIMEOUT,
    REASON_PREFACE_TIMEOUT,
    REASON_PROTOCOL_ERROR,
    REASON_TRANSPORT_CLOSED,
    ConnectionTerminated,
    ConnectRequested,
    ConnectResponded,
    DataReceived,
    Event,
    GoAwayReceived,
    LimitHit,
    RequestRejected,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from zt.hbone.limits import (
    PENDING_CONNECTS,
    PREFACE_TIMEOUT,
    RAPID_RESET,
    FrameGuard,
    RateBudget,
)
from zt.hbone.request import (
    ConnectRequest,
    parse_response,
    response_baggage,
    response_headers,
)
from zt.hbone.settings import DEFAULT_WINDOW as DEFAULT_STREAM_WINDOW
from zt.hbone.settings import HboneSettings
from zt.hbone.streams import StreamRecord, StreamState, StreamTable
from zt.hbone.timers import TimerAction, Timers

Role = Literal["client", "server"]

# Failures surfacing from h2/hyperframe while parsing peer bytes; translated once, here.
_PEER_ERRORS = (h2.exceptions.H2Error, hyperframe.exceptions.HyperframeError)


# Acting on a stream while dispatching events: h2 parsed the whole input before we see the first
# event, so a later RST_STREAM in the same bytes may already have closed (or forgotten) the stream
# there. Its own StreamReset event follows and updates our table.
_h2_ahead = functools.partial(
    contextlib.suppress,
    h2.exceptions.StreamClosedError,
    h2.exceptions.NoSuchStreamError,
    h2.exceptions.StreamIDTooLowError,
)


class HboneConnection:
    """Client or server side of one HBONE connection (see the package docstring for the contract)."""

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        settings: HboneSettings | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """`random_bytes(n)` makes PING payloads (injected so tests can predict them)."""
        if role not in ("client", "server"):
            raise HboneUsageError(f"role: got {role!r}, expected 'client' or 'server'")
        self.role: Role = role
        self.settings = settings or HboneSettings()
        # How often the peer went past each limit (limits.py names); the frame guard shares it.
        self.limit_hits: Counter[str] = Counter()
        self._guard = FrameGuard(
            max_header_block=self.settings.max_header_list_size,
            control_frames_per_second=self.settings.control_frames_per_second,
            settings_per_second=self.settings.settings_per_second,
            now=now,
            hits=self.limit_hits,
        )
        self._h2: HboneH2Connection = new_h2(role == "client", self.settings, self._guard)
        self._streams = StreamTable()
        preface = self.settings.preface_timeout
        self._timers = Timers(
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            # Idle close is the client's alone (ztunnel: the pool releases a connection unused for
            # 5 min, which sends GOAWAY; its HBONE server has no idle timer): a client may keep
            # a connection for its next tunnel, and the server must not race it with a GOAWAY
            # while that tunnel's HEADERS are on the way.
            idle_timeout=self.settings.idle_timeout if role == "client" else None,
            last_ping=now,
            idle_since=now,
            preface_deadline=None if preface is None else now + preface,
            random_bytes=random_bytes,
        )
        # Server: CONNECTs not yet answered (each one a dial in flight in the adapter).
        self._unanswered: set[int] = set()
        self._premature_resets = RateBudget.per_second(
            self.settings.max_premature_resets_per_second, now
        )
        # Per receive_data call: streams the same bytes also reset, WindowOpened already emitted.
        self._reset_in_batch: set[int] = set()
        self._unannounced: set[int] = set()  # requests of this batch skipped for that reason
        self._opened: set[int | None] = set()
        self._now = now
        self._highest_seen = 0
        self._local_goaway: int | None = None
        self._remote_goaway: int | None = None
        self._terminated: ConnectionTerminated | None = None
        self._pending: list[Event] = []

    # ----------------------------------------------------------------- introspection

    @property
    def closed(self) -> bool:
        """True once a ConnectionTerminated was produced (or is pending)."""
        return self._terminated is not None

    @property
    def draining(self) -> bool:
        """We sent GOAWAY (start_drain) or the peer did."""
        return self._local_goaway is not None or self._remote_goaway is not None

    @property
    def open_streams(self) -> int:
        """Streams not yet closed or reset."""
        return self._streams.active()

    @property
    def max_streams(self) -> int:
        """Client: min(settings.client_max_streams, the peer's MAX_CONCURRENT_STREAMS)."""
        if self.role == "server":
            return self.settings.server_max_streams
        return min(
            self.settings.client_max_streams, self._h2.remote_settings.max_concurrent_streams
        )

    @property
    def pending_connects(self) -> int:
        """Server: CONNECTs announced (ConnectRequested) and not yet answered nor reset."""
        return len(self._unanswered)

    @property
    def input_pending(self) -> bool:
        """The last receive_data stopped at `settings.max_frames_per_call` with received bytes
        left: call `receive_data(b"", now)` again (after letting other work run)."""
        if self.closed or self._guard.frames_left > 0:
            return False
        return getattr(self._h2.incoming_buffer, "pending_bytes", 0) >= 9

    def connection_send_window(self) -> int:
        """Bytes the connection-level send window allows now, on any stream."""
        if self.closed:
            return 0
        return self._h2.outbound_flow_control_window

    @property
    def max_outbound_frame_size(self) -> int:
        """The largest DATA payload the peer accepts (Envoy: 16 KiB)."""
        return self._h2.max_outbound_frame_size

    def can_open_stream(self) -> bool:
        return (
            self.role == "client"
            and not self.closed
            and not self.draining
            and self.open_streams < self.max_streams
        )

    def stream_state(self, stream_id: int) -> StreamState:
        state = self._streams.state(stream_id)
        if state is not None:
            return state
        if 0 < stream_id <= self._highest_seen:
            return StreamState.CLOSED  # finished long ago and forgotten
        raise UnknownStream(f"stream_id: got {stream_id!r}, expected a stream of this connection")

    def send_window(self, stream_id: int) -> int:
        """Bytes `send_data` would accept now on `stream_id` (stream and connection windows)."""
        record = self._streams.get(stream_id)
        if record is None or record.finished or record.local_ended or self.closed:
            return 0
        return self._h2.local_flow_control_window(stream_id)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, cleared."""
        return self._h2.data_to_send()

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """Everything queued for the peer as a list of chunks (DATA payloads by reference, not
        copied: the caller must not mutate what it gave `send_data` until it is written), cleared."""
        return self._h2.chunks_to_send()

    def output(self) -> list[Chunk]:
        """`chunks_to_send` with `send_held` payloads in it: each `HeldPayload` follows the
        bytes that end with its frame header. For a transport that can move them."""
        return self._h2.output()

    # ----------------------------------------------------------------- client/server actions

    def open_stream(self, request: ConnectRequest) -> int:
        """Client: send a CONNECT; returns the stream id. Raises ConnectionFull/ConnectionNotUsable."""
        if self.role != "client":
            raise HboneUsageError("open_stream: got a server connection, expected a client one")
        if self.closed or self.draining:
            raise ConnectionNotUsable("connection is draining or closed: dial another one")
        if self.open_streams >= self.max_streams:
            raise ConnectionFull(f"connection carries {self.open_streams} of {self.max_streams}")
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            raise ConnectionNotUsable("stream ids exhausted: dial another connection") from None
        self._h2.send_headers(stream_id, request.headers(), end_stream=False)
        self._streams.add(stream_id)
        self._highest_seen = stream_id
        self._timers.streams_changed(self._streams.any_active(), self._now)
        return stream_id

    def respond(
        self, stream_id: int, status: int, reason: str = "", baggage: str | None = None
    ) -> None:
        """Server: answer a ConnectRequested. 200 opens the tunnel; any other status ends the stream
        (docs/design.md §2: After 200, failures become RST_STREAM). A 200 may carry the answering
        workload's `baggage` (zt/hbone/baggage.py)."""
        record = self._server_record(stream_id)
        if record is None:
            return  # reset meanwhile (its StreamReset event is in the same batch): nothing to answer
        if record.status is not None:
            raise StreamNotWritable(f"stream {stream_id}: already answered {record.status}")
        if not 200 <= status <= 599:
            raise HboneUsageError(f"status: got {status!r}, expected 200..599")
        end = status != 200
        headers = response_headers(status, reason, baggage)
        self._h2.send_headers(stream_id, headers, end_stream=end)
        record.status = status
        self._unanswered.discard(stream_id)
        if end:
            record.local_ended = True
            # A refused tunnel's early DATA will never be written upstream: return its window now.
            self._release_unacked(record)
            if not record.remote_ended:
                # RFC 9113 §8.1: a server "can request that the client abort transmission of a
                # request without error by sending a RST_STREAM with an error code of NO_ERROR
                # after sending a complete response".
                self._h2.reset_stream(stream_id, H2_NO_ERROR)
                self._mark_reset(record, H2_NO_ERROR)
        self._retire(record)

    def reject(self, stream_id: int, error: HboneError) -> None:
        """Server: answer with the status and reason an HboneError carries."""
        self.respond(stream_id, error.http_status, error.reason)

    def send_data(
        self, stream_id: int, data: bytes | memoryview, *, end_stream: bool = False
    ) -> int:
        """Queue tunnel bytes; returns how many were accepted (≤ send windows). The caller keeps the
        rest and retries after WindowOpened. END_STREAM is sent only with the last accepted byte."""
        record = self._writable(stream_id)
        view = memoryview(data)
        accepted = min(len(view), self._h2.local_flow_control_window(stream_id))
        # docs/design.md §2: Send frames as large as the peer allows (Envoy allows only 16 KiB).
        frame = self._h2.max_outbound_frame_size
        complete = accepted == len(view)
        for offset in range(0, accepted, frame):
            chunk = view[offset : min(offset + frame, accepted)]
            last = end_stream and complete and offset + len(chunk) == accepted
            self._h2.send_data(stream_id, _unshared(chunk), end_stream=last)
        if end_stream and complete:
            if accepted == 0:
                self._h2.end_stream(stream_id)
            record.local_ended = True
            self._retire(record)
        return accepted

    def send_held(self, stream_id: int, payload: HeldPayload) -> None:
        """Queue one DATA frame whose payload stays outside (zt/hbone/_h2.py `HeldPayload`): the
        windows and the stream state count it as `len(payload)` bytes. The caller sized it to
        fit: at most `send_window(stream_id)` and `max_outbound_frame_size`, at least 1."""
        self._writable(stream_id)
        size = len(payload)
        if not 0 < size <= min(self.send_window(stream_id), self.max_outbound_frame_size):
            raise HboneUsageError(
                f"send_held: got {size} bytes, expected 1..{self.send_window(stream_id)} "
                f"(send window) and <= {self.max_outbound_frame_size} (frame size)"
            )
        self._h2.send_data(stream_id, payload)  # type: ignore[arg-type]  # h2 needs only len()

    def end_stream(self, stream_id: int) -> None:
        """Local FIN: END_STREAM. A no-op when the stream is already ended or reset (races with the
        peer's RST are normal in a relay)."""
        record = self._streams.get(stream_id)
        if record is None:
            self._require_known(stream_id)
            return
        if record.local_ended or record.finished or record.refused or self.closed:
            return
        if self.role == "server" and record.status is None:
            raise StreamNotWritable(f"stream {stream_id}: respond() before ending the stream")
        self._h2.end_stream(stream_id)
        record.local_ended = True
        self._retire(record)

    def reset_stream(self, stream_id: int, error_code: int = H2_CANCEL) -> None:
        """RST_STREAM (a TCP reset on the local side → RST_STREAM). No-op on finished streams."""
        record = self._streams.get(stream_id)
        if record is None:
            self._require_known(stream_id)
            return
        if record.finished or self.closed:
            return
        self._h2.reset_stream(stream_id, error_code)
        self._mark_reset(record, error_code)
        self._retire(record)

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The local socket took `n` flow-controlled bytes of `stream_id`: hand the window back.

        Acknowledging a reset stream is unnecessary (the core returned its window) and ignored."""
        if n < 0:
            raise HboneUsageError(f"n: got {n!r}, expected >= 0")
        record = self._streams.get(stream_id)
        if record is None or self.closed:
            return
        n = min(n, record.unacked)
        if n:
            record.unacked -= n
            self._h2.acknowledge_received_data(n, stream_id)
            self._retire(record)

    def start_drain(self, now: float, deadline: float) -> None:
        """Send GOAWAY now; streams already accepted may finish until `deadline` (absolute time on
        the caller's clock), then ConnectionTerminated(drain_deadline) resets what is left."""
        self._now = now
        if self.closed or self._local_goaway is not None:
            return
        last = self._highest_seen if self.role == "server" else 0
        self._h2.send_goaway_keep_open(last, H2_NO_ERROR)
        self._local_goaway = last
        self._timers.drain_deadline = deadline
        self._check_drained()

    def transport_closed(self, now: float) -> list[Event]:
        """The TLS/TCP connection is gone (EOF, reset, TLS error): every stream dies."""
        self._now = now
        if self.closed:
            return self._take_pending()
        return self._terminate(REASON_TRANSPORT_CLOSED, H2_INTERNAL_ERROR, None, goaway=False)

    # ----------------------------------------------------------------- time

    def next_deadline(self) -> float | None:
        """When `on_timer` must next be called; None when nothing is scheduled."""
        if self._pending:
            return self._now
        if self.closed:
            return None
        return self._timers.next_deadline()

    def on_timer(self, now: float) -> list[Event]:
        """PING every interval, drop without answer after the timeout, idle close, drain deadline."""
        self._now = now
        if self._pending or self.closed:
            return self._take_pending()
        for action in self._timers.due(now):
            if action is TimerAction.SEND_PING:
                self._h2.ping(self._timers.ping_sent(now))
            elif action is TimerAction.PING_TIMEOUT:
                return self._terminate(REASON_PING_TIMEOUT, H2_NO_ERROR, None, goaway=True)
            elif action is TimerAction.IDLE_TIMEOUT:
                return self._terminate(REASON_IDLE, H2_NO_ERROR, None, goaway=True)
            elif action is TimerAction.PREFACE_TIMEOUT:
                # RFC 9113 §3.4: an invalid (here: missing) preface is "a connection error [...]
                # of type PROTOCOL_ERROR".
                detail = f"no HTTP/2 preface and SETTINGS within {self.settings.preface_timeout} s"
                return self._limit_terminate(
                    PREFACE_TIMEOUT, detail, H2_PROTOCOL_ERROR, REASON_PREFACE_TIMEOUT
                )
            else:
                return self._terminate(REASON_DRAIN_DEADLINE, H2_NO_ERROR, None, goaway=True)
        return []

    # ----------------------------------------------------------------- bytes in

    def receive_data(self, data: bytes | memoryview, now: float) -> list[Event]:
        """Feed bytes from the peer. Never raises on peer input: protocol errors come back as
        StreamReset events for live streams plus ConnectionTerminated(protocol_error)."""
        self._now = now
        if self.closed:
            return self._take_pending()
        self._guard.now = now
        self._guard.frames_left = self.settings.max_frames_per_call
        try:
            h2_events = self._h2.receive_data(data)
        except _PEER_ERRORS as exc:
            code = int(getattr(exc, "error_code", None) or H2_PROTOCOL_ERROR)
            limit = getattr(exc, "limit", None)
            if limit is not None:  # a frame limit (limits.py): counted there, GOAWAY queued by h2
                return self._limit_terminate(limit, str(exc), code, REASON_LIMIT, count=False)
            error = PeerProtocolError(f"peer broke HTTP/2: {exc}", code)
            return self._terminate(REASON_PROTOCOL_ERROR, code, error, goaway=True)
        events: list[Event] = []
        # A CONNECT reset by the same bytes that opened it never reaches the adapter (no dial):
        # one pass over the batch, so the rapid-reset pattern costs no task at all.
        self._reset_in_batch = {
            e.stream_id or 0 for e in h2_events if isinstance(e, h2.events.StreamReset)
        }
        self._opened.clear()
        for h2_event in h2_events:
            self._dispatch(h2_event, events)
            if self.closed:
                break
        self._reset_in_batch = set()
        self._unannounced.clear()
        self._timers.streams_changed(self._streams.any_active(), now)
        events.extend(self._take_pending())
        return events

    def _dispatch(self, ev: h2.events.Event, out: list[Event]) -> None:
        if isinstance(ev, h2.events.DataReceived):
            self._on_data(ev, out)
        elif isinstance(ev, h2.events.WindowUpdated):
            # One WindowOpened per stream per batch; a set, not a scan of `out` (which made a
            # batch of interleaved 1-byte DATA and WINDOW_UPDATE frames quadratic).
            key = ev.stream_id or None
            if key not in self._opened:
                self._opened.add(key)
                out.append(WindowOpened(key))
        elif isinstance(ev, h2.events.RequestReceived):
            self._on_request(ev, out)
        elif isinstance(ev, h2.events.ResponseReceived):
            self._on_response(ev, out)
        elif isinstance(ev, h2.events.StreamEnded):
            self._on_stream_ended(ev, out)
        elif isinstance(ev, h2.events.StreamReset):
            self._on_stream_reset(ev, out)
        elif isinstance(ev, h2.events.PingAckReceived):
            self._timers.ping_acked(ev.ping_data or b"", self._now)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._timers.preface_received()
            self._on_settings(ev, out)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._on_goaway(ev, out)
        # Trailers, 1xx, PRIORITY, ALTSVC, unknown frames: nothing for a tunnel to do.

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged, out: list[Event]) -> None:
        """Only a larger INITIAL_WINDOW_SIZE can let a waiting writer send (RFC 9113 §6.9.2: the
        change adjusts every stream's window by the difference)."""
        change = ev.changed_settings.get(SettingCodes.INITIAL_WINDOW_SIZE)
        if change is None:
            return
        before = DEFAULT_STREAM_WINDOW if change.original_value is None else change.original_value
        if change.new_value > before:
            out.append(WindowOpened(None, all_streams=True))

    def _on_request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        stream_id = ev.stream_id or 0
        if self.role != "server":
            return
        if self._local_goaway is not None and stream_id > self._local_goaway:
            # RFC 9113 §6.8: streams above the GOAWAY's last id are not processed; REFUSED_STREAM
            # tells the client it is safe to retry elsewhere.
            with _h2_ahead():
                self._h2.reset_stream(stream_id, H2_REFUSED_STREAM)
            return
        self._highest_seen = max(self._highest_seen, stream_id)
        if self.open_streams >= self.settings.server_max_streams:
            # RFC 9113 §5.1.2: exceeding the advertised limit is "a stream error [...] of type
            # PROTOCOL_ERROR or REFUSED_STREAM"; REFUSED_STREAM allows an automatic retry.
            with _h2_ahead():
                self._h2.reset_stream(stream_id, H2_REFUSED_STREAM)
            return
        if stream_id in self._reset_in_batch:
            # Reset by the peer later in these same bytes: nothing to answer, nothing to dial. The
            # record makes the reset below count as premature (rapid reset budget).
            self._streams.add(stream_id)
            self._unanswered.add(stream_id)
            self._unannounced.add(stream_id)
            return
        if len(self._unanswered) >= self.settings.max_pending_connects:
            # Dials in flight are capped per connection. RFC 9113 §8.7: REFUSED_STREAM "indicate[s]
            # that the stream is being closed prior to any processing having occurred. Any
            # request that was sent on the reset stream can be safely retried."
            with _h2_ahead():
                self._h2.reset_stream(stream_id, H2_REFUSED_STREAM)
            self.limit_hits[PENDING_CONNECTS] += 1
            detail = f"{len(self._unanswered)} CONNECTs already unanswered (max_pending_connects)"
            out.append(LimitHit(PENDING_CONNECTS, detail, fatal=False))
            return
        record = self._streams.add(stream_id)
        try:
            request = ConnectRequest.parse(ev.headers or [])
        except BadConnectRequest as err:
            record.remote_ended = ev.stream_ended is not None
            with _h2_ahead():
                self.respond(stream_id, err.http_status, err.reason)
            out.append(RequestRejected(stream_id, err.http_status, err))
            return
        self._unanswered.add(stream_id)
        out.append(ConnectRequested(stream_id, request))

    def _on_response(self, ev: h2.events.ResponseReceived, out: list[Event]) -> None:
        record = self._streams.get(ev.stream_id or 0)
        if record is None:
            return
        status, reason = parse_response(ev.headers or [])
        record.status = status
        baggage = response_baggage(ev.headers or []) if status == 200 else None
        out.append(ConnectResponded(record.stream_id, status, reason, baggage))
        if status == 200:
            return
        # A refused tunnel is over for both sides: close ours now and drop any body.
        if ev.stream_ended is not None:
            record.remote_ended = True
            if not record.local_ended:
                with _h2_ahead():
                    self._h2.end_stream(record.stream_id)
                record.local_ended = True
        elif not record.finished:
            with _h2_ahead():
                self._h2.reset_stream(record.stream_id, H2_CANCEL)
            self._mark_reset(record, H2_CANCEL)
        self._retire(record)

    def _on_data(self, ev: h2.events.DataReceived, out: list[Event]) -> None:
        stream_id = ev.stream_id or 0
        size = ev.flow_controlled_length or 0
        data = ev.data or b""
        record = self._streams.get(stream_id)
        if record is None or record.finished or record.refused or not data:
            # Nobody will write these bytes anywhere: hand the window back at once.
            if size:
                self._h2.acknowledge_received_data(size, stream_id)
            return
        record.unacked += size
        out.append(DataReceived(stream_id, data, size))

    def _on_stream_ended(self, ev: h2.events.StreamEnded, out: list[Event]) -> None:
        record = self._streams.get(ev.stream_id or 0)
        if record is None or record.remote_ended:
            return
        record.remote_ended = True
        if not record.refused and record.reset_code is None:
            out.append(StreamEnded(record.stream_id))
        self._retire(record)

    def _on_stream_reset(self, ev: h2.events.StreamReset, out: list[Event]) -> None:
        record = self._streams.get(ev.stream_id or 0)
        if record is None or record.reset_code is not None:
            return
        code = int(ev.error_code or 0)
        after_end = record.remote_ended
        refused = record.refused
        premature = ev.remote_reset and record.stream_id in self._unanswered
        announced = record.stream_id not in self._unannounced
        self._mark_reset(record, code)
        if not refused and announced:
            out.append(StreamReset(record.stream_id, code, after_end, remote=ev.remote_reset))
        self._retire(record)
        if premature and not self._premature_resets.take(self._now):
            # CVE-2023-44487 ("rapid reset"): each CONNECT reset before its answer costs a dial.
            rate = self.settings.max_premature_resets_per_second
            detail = f"more than {rate:g} streams per second reset before their answer"
            out.extend(
                self._limit_terminate(RAPID_RESET, detail, H2_ENHANCE_YOUR_CALM, REASON_LIMIT)
            )

    def _on_goaway(self, ev: h2.events.ConnectionTerminated, out: list[Event]) -> None:
        last = int(ev.last_stream_id or 0)
        code = int(ev.error_code or 0)
        self._remote_goaway = last
        out.append(GoAwayReceived(last, code))
        if code != H2_NO_ERROR:
            error = PeerProtocolError(f"peer sent GOAWAY with error code {code:#x}", code)
            out.extend(self._terminate(REASON_PEER_GOAWAY, code, error, goaway=False))
            return
        if self.role == "client":
            for record in self._streams.live():
                if record.stream_id > last and not record.finished:
                    # RFC 9113 §6.8: streams above last_stream_id were not processed: retryable.
                    self._mark_reset(record, H2_REFUSED_STREAM)
                    out.append(StreamReset(record.stream_id, H2_REFUSED_STREAM, False))
                    self._retire(record)
        self._check_drained()

    # ----------------------------------------------------------------- helpers

    def _server_record(self, stream_id: int) -> StreamRecord | None:
        """The record to answer on; None when the stream is already over (a race, not misuse)."""
        if self.role != "server":
            raise HboneUsageError("respond: got a client connection, expected a server one")
        record = self._streams.get(stream_id)
        if record is None:
            self._require_known(stream_id)
            return None
        if record.finished or self.closed:
            return None
        return record

    def _writable(self, stream_id: int) -> StreamRecord:
        if self.closed:
            raise ConnectionNotUsable("connection terminated")
        record = self._streams.get(stream_id)
        if record is None:
            self._require_known(stream_id)
            raise StreamNotWritable(f"stream {stream_id}: finished")
        if record.finished or record.local_ended or record.refused:
            raise StreamNotWritable(f"stream {stream_id}: {record.state.value}, cannot send")
        if self.role == "server" and record.status != 200:
            raise StreamNotWritable(f"stream {stream_id}: respond(200) before sending data")
        return record

    def _require_known(self, stream_id: int) -> None:
        if not 0 < stream_id <= self._highest_seen:
            raise UnknownStream(
                f"stream_id: got {stream_id!r}, expected a stream of this connection"
            )

    def _mark_reset(self, record: StreamRecord, code: int) -> None:
        """Record a reset and return the stream's unacknowledged bytes to the connection window:
        the adapter drops them, so nobody would acknowledge them later."""
        record.reset_code = code
        self._unanswered.discard(record.stream_id)
        self._release_unacked(record)

    def _release_unacked(self, record: StreamRecord) -> None:
        if record.unacked:
            self._h2.acknowledge_received_data(record.unacked, record.stream_id)
            record.unacked = 0

    def _retire(self, record: StreamRecord) -> None:
        if self._streams.retire_if_finished(record) or record.finished:
            self._timers.streams_changed(self._streams.any_active(), self._now)
            self._check_drained()

    def _check_drained(self) -> None:
        """After a GOAWAY either way, the connection ends when its last stream does."""
        if self.closed or not self.draining or self._streams.any_active():
            return
        reason = REASON_DRAINED if self._local_goaway is not None else REASON_PEER_GOAWAY
        self._pending.extend(self._terminate(reason, H2_NO_ERROR, None, goaway=False))

    def _terminate(
        self, reason: str, code: int, error: HboneError | None, *, goaway: bool
    ) -> list[Event]:
        """End the connection; every live stream is cut. RFC 9113 §7: CONNECT_ERROR "The connection
        established in response to a CONNECT request was reset or abnormally closed" — never read
        as EOF (`StreamReset.is_eof` is False), so relays reset their TCP side: data was lost."""
        events: list[Event] = []
        for record in self._streams.live():
            if not record.finished:
                after_end = record.remote_ended
                # Refused, or never announced (reset in its own batch): the adapter has no stream.
                untold = record.refused or record.stream_id in self._unannounced
                self._mark_reset(record, H2_CONNECT_ERROR)
                if not untold:
                    events.append(
                        StreamReset(record.stream_id, H2_CONNECT_ERROR, after_end, remote=False)
                    )
        if goaway and self._h2.state_machine.state is not ConnectionState.CLOSED:
            self._h2.close_connection(code, last_stream_id=self._highest_seen)
        self._terminated = ConnectionTerminated(reason, code, error)
        events.append(self._terminated)
        self._timers.idle_since = None
        return events

    def _limit_terminate(
        self, limit: str, detail: str, code: int, reason: str, *, count: bool = True
    ) -> list[Event]:
        """The peer went past a limit that ends the connection: GOAWAY(code), streams cut."""
        if count:
            self.limit_hits[limit] += 1
        error = PeerLimitExceeded(limit, detail, code)
        return [
            LimitHit(limit, detail, fatal=True),
            *self._terminate(reason, code, error, goaway=True),
        ]

    def _take_pending(self) -> list[Event]:
        pending, self._pending = self._pending, []
        return pending


def _unshared(chunk: memoryview) -> bytes | memoryview:
    """A payload h2 may keep by reference: the whole immutable bytes object when `chunk` covers
    it (h2 copies memoryviews with `tobytes()`), else the view itself (h2 copies it)."""
    whole = chunk.obj
    if type(whole) is bytes and len(whole) == chunk.nbytes:
        return whole
    return chunk
