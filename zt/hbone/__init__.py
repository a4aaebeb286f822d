"""The sans-IO HBONE core: HTTP/2 CONNECT tunnels as a state machine (no asyncio/socket/ssl/bcc).

API (stable contract for zt/proxy; refinements are marked "refined"):

    from zt.hbone import HboneConnection, HboneSettings, ConnectRequest, StreamState, events, errors

    conn = HboneConnection("client" | "server", now=t, settings=HboneSettings())
    # The preamble/SETTINGS/connection WINDOW_UPDATE are queued at construction: flush them first.
    conn.data_to_send() -> bytes                    # everything queued, cleared; flush after EVERY call
    conn.receive_data(data, now) -> list[Event]     # never raises on peer bytes (see below)
    conn.input_pending -> bool                      # stopped at max_frames_per_call: call
                                                    # receive_data(b"", now) again, later
    conn.next_deadline() -> float | None            # absolute, same clock as `now`
    conn.on_timer(now) -> list[Event]               # PING/ping timeout/idle/drain deadline/pending end

    # client
    conn.can_open_stream() -> bool                  # not closed, not draining, open < max_streams
    conn.max_streams -> int                         # min(100, peer's MAX_CONCURRENT_STREAMS)
    conn.open_stream(ConnectRequest) -> int         # raises errors.ConnectionFull / ConnectionNotUsable
    # server
    conn.respond(stream_id, status, reason="", baggage=None)  # 200 opens (with `baggage`, the
                                                    # answering workload's names); other statuses
                                                    # end the stream; no-op if reset meanwhile
    conn.reject(stream_id, err: errors.HboneError)  # refined: respond(err.http_status, err.reason)
    # both
    conn.send_data(stream_id, data, end_stream=False) -> int   # bytes accepted (≤ windows); keep rest
    conn.send_window(stream_id) -> int              # what send_data would accept now
    conn.end_stream(stream_id)                      # local FIN; no-op if already ended/reset
    conn.reset_stream(stream_id, error_code=CANCEL) # no-op if already finished
    conn.acknowledge(stream_id, n)                  # the local socket took n flow-controlled bytes
    conn.stream_state(stream_id) -> StreamState     # OPEN/HALF_CLOSED_LOCAL/HALF_CLOSED_REMOTE/CLOSED/RESET
    conn.open_streams -> int; conn.closed -> bool; conn.draining -> bool
    conn.max_outbound_frame_size -> int             # refined: the peer's frame limit (Envoy 16 KiB)
    conn.start_drain(now, deadline)                 # GOAWAY now; `deadline` is absolute
    conn.transport_closed(now) -> list[Event]       # refined: socket EOF/error → resets + terminated

Events (zt.hbone.events, frozen):
    ConnectRequested(stream_id, request)            server: admit, dial, then respond()
    RequestRejected(stream_id, status, error)       refined, server: malformed request; the core already
                                                    answered 400 and closed it (for logs only)
    ConnectResponded(stream_id, status, reason, baggage)  client; `.ok`; non-200: the core closed
                                                    the stream; a 200's `baggage` header, or None
    DataReceived(stream_id, data, flow_controlled_length)  → write, then acknowledge(id, length)
    StreamEnded(stream_id)                          peer END_STREAM → shutdown(SHUT_WR) after writing
    StreamReset(stream_id, error_code, after_end_stream, remote=True)
                                                    `.is_eof`: NO_ERROR/CANCEL after END_STREAM → EOF
                                                    (finish gracefully); else RST the TCP side
    WindowOpened(stream_id | None, all_streams)     resume reading TCP (None: the connection window;
                                                    all_streams: SETTINGS grew every stream window)
    LimitHit(limit, detail, fatal)                  the peer went past a limit (logs, counters)
    GoAwayReceived(last_stream_id, error_code)      no new streams here (pool: evict)
    ConnectionTerminated(reason, error_code, error) flush data_to_send(), close the socket

Semantics the adapter relies on:
- Flow control: the core never acknowledges delivered DATA by itself; `acknowledge()` returns window
  (WINDOW_UPDATE batched by h2 at half a window). Bytes of reset/refused streams are returned by the
  core, and `acknowledge()` on them is ignored, so a slow reader bounds buffering to the windows.
- Sending: `send_data` splits into frames of the peer's MAX_FRAME_SIZE; END_STREAM rides on the last
  accepted byte only if everything was accepted (otherwise call again with the rest).
- Server: DATA may arrive before you respond (buffer it; acknowledge only after writing upstream).
  `send_data`/`end_stream` before `respond(200)` raise StreamNotWritable.
- Client: `send_data` before the 200 is allowed (optimistic); after a non-200 it raises.
- A peer GOAWAY(NO_ERROR) keeps streams ≤ last_stream_id running (RFC 9113 §6.8; h2 itself would kill
  them); streams above it get StreamReset(REFUSED_STREAM) (safe to retry). When the last stream of a
  draining connection finishes, ConnectionTerminated("drained"/"peer_goaway") is returned by the next
  receive_data/on_timer (next_deadline() then returns "now").
- Whenever the connection ends (protocol error, ping timeout, drain deadline, idle, peer GOAWAY with
  an error, transport_closed) every live stream first gets StreamReset(CONNECT_ERROR, remote=False)
  — never `is_eof` — then ConnectionTerminated(reason, code, error). Protocol errors carry
  errors.PeerProtocolError and a queued GOAWAY.
- The server refuses a stream beyond its advertised 200 with RST_STREAM(REFUSED_STREAM) (no event),
  as it refuses streams above its own GOAWAY's last id.
- A malformed CONNECT costs one stream (400 + END_STREAM), never the connection.
- Events of one receive_data batch describe things that already happened. A CONNECT reset in the
  same bytes that opened it is not reported at all (no ConnectRequested, no StreamReset: nothing to
  dial). Other events may concern streams the batch later ended: respond/end_stream/reset_stream
  are no-ops on such finished streams; send_data raises StreamNotWritable (catch HboneError).
- Limits against an abusive peer (limits.py; values in HboneSettings, each with its reason): a
  frame over our MAX_FRAME_SIZE gets GOAWAY(FRAME_SIZE_ERROR) on its 9-byte header; a header block
  (HEADERS + CONTINUATION) over max_header_list_size, PING/SETTINGS/PRIORITY over their per-second
  budgets, and CONNECTs reset before their answer over max_premature_resets_per_second
  (CVE-2023-44487) get GOAWAY(ENHANCE_YOUR_CALM); no preface + SETTINGS within preface_timeout gets
  GOAWAY(PROTOCOL_ERROR); CONNECTs past max_pending_connects unanswered ones get
  RST_STREAM(REFUSED_STREAM). Each is a LimitHit(limit, detail, fatal) event (before the
  ConnectionTerminated when fatal) and a count in `conn.limit_hits`. `conn.pending_connects`: the
  unanswered CONNECTs. PING payloads come from `random_bytes` (default os.urandom); only an ACK
  echoing the outstanding one counts. One receive_data call handles at most
  `max_frames_per_call` frames (bounded work per call, so an adapter can let other connections
  run); `input_pending` says more received frames wait.
- WindowOpened(None, all_streams=True) only when a SETTINGS change grew every stream's window.
- Every exception HboneConnection raises derives from errors.HboneError. API misuse and races with
  the peer raise UnknownStream / StreamNotWritable (also zt.errors.UsageError subclasses).
  HboneSettings(...) raises zt.errors.UsageError; ConnectRequest(...) and .parse() raise
  errors.BadConnectRequest (field, value, expected).
- Non-200 answers carry their reason in a `zt-reason` response header (HTTP/2 has no reason
  phrase); a client reading a peer without it (Envoy) gets the standard phrase ("Service
  Unavailable").
- Errors carry http_status/h2_error_code/reason: BadConnectRequest/AuthorityMismatch (400),
  PolicyDenied (401), UnknownDestination/UpstreamUnreachable (503).

Performance notes: hyperframe's DATA repr (hex of the whole payload, evaluated by h2 for every
received frame) is replaced by a constant-time one (_h2.py): receive_data is ~6-9x faster at 1 MiB
frames (`python -m tests.unit.hbone.bench_core`). DATA fast paths (docs/PERFORMANCE.md), same API:
- outbound (_h2.py): `send_data` frames DATA with a 9-byte header and passes payloads by reference;
  `chunks_to_send()` returns them for `transport.writelines`. `send_held` queues a frame whose
  payload is a `HeldPayload` (bytes the transport splices itself); `output()` returns it in place.
- inbound (_inbound.py, `HboneSettings.inbound_fast_path`, on by default): received chunks are
  scanned without copying; unpadded DATA is parsed without hyperframe objects and handed to h2's
  own DATA handler, so windows, stream states and errors are h2's. `DataReceived.data` may be a
  read-only memoryview of the received bytes (when the payload is >= 1/4 of its chunk) or bytes.
"""

from zt.hbone import errors, events
from zt.hbone._h2 import Chunk, HeldPayload
from zt.hbone.connection import HboneConnection, Role
from zt.hbone.request import ConnectRequest, format_hostport, new_traceparent, parse_authority
from zt.hbone.settings import HboneSettings
from zt.hbone.streams import StreamState

__all__ = [
    "Chunk",
    "ConnectRequest",
    "HboneConnection",
    "HboneSettings",
    "HeldPayload",
    "Role",
    "StreamState",
    "errors",
    "events",
    "format_hostport",
    "new_traceparent",
    "parse_authority",
]
