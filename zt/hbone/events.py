"""What an HBONE connection tells its adapter: frozen events, in the order the peer caused them."""

from __future__ import annotations

from dataclasses import dataclass

from zt.hbone.errors import H2_CANCEL, H2_NO_ERROR, HboneError
from zt.hbone.request import ConnectRequest


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """Server: a valid CONNECT arrived; answer with `respond()` once admitted and dialed."""

    stream_id: int
    request: ConnectRequest


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """Server: a malformed request on `stream_id`; the core already answered `status` and ended it.

    Only for logs and metrics; the adapter has nothing to do.
    """

    stream_id: int
    status: int
    error: HboneError


@dataclass(frozen=True, slots=True)
class ConnectResponded:
    """Client: the server answered the CONNECT. 200 = tunnel up; anything else = the stream is over
    (the core drops and acknowledges any body that follows)."""

    stream_id: int
    status: int
    reason: str
    # a 200's `baggage`: the answering workload's telemetry names (zt/hbone/baggage.py)
    baggage: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Tunnel bytes from the peer. Call `acknowledge(stream_id, flow_controlled_length)` once the
    local socket took them (docs/design.md §2: acknowledge only after the write)."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent END_STREAM: `shutdown(SHUT_WR)` the local socket after writing what is left."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone (RST_STREAM from the peer, a GOAWAY that excluded it, or a lost transport).

    `after_end_stream` is True when the peer had already sent END_STREAM. RFC 9113 §8.1: a server
    "can send a complete response prior to the client sending an entire request [...] by sending a
    RST_STREAM with an error code of NO_ERROR after sending a complete response"; docs/design.md §2:
    RST_STREAM (NO_ERROR/CANCEL) after END_STREAM is EOF, not an error — see `is_eof`.
    """

    stream_id: int
    error_code: int
    after_end_stream: bool
    remote: bool = True

    @property
    def is_eof(self) -> bool:
        """True when the relay should finish gracefully instead of resetting the TCP side."""
        return self.after_end_stream and self.error_code in (H2_NO_ERROR, H2_CANCEL)


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Send window grew on `stream_id` (None: on the connection): resume reading. `all_streams`:
    a SETTINGS change grew every stream's window (RFC 9113 §6.9.2); only then may a writer
    blocked on its own stream window send without a WINDOW_UPDATE of its own."""

    stream_id: int | None
    all_streams: bool = False


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer sent GOAWAY: open no new streams here; streams ≤ last_stream_id keep running."""

    last_stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over: flush `data_to_send()` (a GOAWAY may be queued) and close the socket.

    `reason` is one of the REASON_* constants below; `error` is set for protocol errors.
    """

    reason: str
    error_code: int = H2_NO_ERROR
    error: HboneError | None = None


@dataclass(frozen=True, slots=True)
class LimitHit:
    """The peer went past one of the connection's limits (a `zt.hbone.limits` name). `fatal`: the
    connection ends (a ConnectionTerminated follows in the same list); else one stream was
    refused. For logs and counters only: the core already acted."""

    limit: str
    detail: str
    fatal: bool


REASON_PROTOCOL_ERROR = "protocol_error"
REASON_LIMIT = "limit_exceeded"
REASON_PREFACE_TIMEOUT = "preface_timeout"
REASON_PING_TIMEOUT = "ping_timeout"
REASON_IDLE = "idle_timeout"
REASON_DRAINED = "drained"
REASON_DRAIN_DEADLINE = "drain_deadline"
REASON_PEER_GOAWAY = "peer_goaway"
REASON_TRANSPORT_CLOSED = "transport_closed"
REASON_CLOSED = "closed"

Event = (
    ConnectRequested
    | RequestRejected
    | ConnectResponded
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | GoAwayReceived
    | LimitHit
    | ConnectionTerminated
)
