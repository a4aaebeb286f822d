"""Typed HBONE failures: each carries the CONNECT status, the RST_STREAM/GOAWAY code and a log reason.

docs/design.md §2: 400 malformed request or authority IP ≠ the pod the connection reached; 401 policy
denied; 503 unknown destination or upstream unreachable (10 s dial timeout). After 200, failures
become RST_STREAM.
"""

from __future__ import annotations

from zt.errors import (
    H2_CANCEL,
    H2_CONNECT_ERROR,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    UsageError,
    ZtError,
)

H2_FLOW_CONTROL_ERROR = 0x3
H2_SETTINGS_TIMEOUT = 0x4
H2_STREAM_CLOSED = 0x5
H2_FRAME_SIZE_ERROR = 0x6
H2_COMPRESSION_ERROR = 0x9
H2_ENHANCE_YOUR_CALM = 0xB

__all__ = [
    "H2_CANCEL",
    "H2_COMPRESSION_ERROR",
    "H2_CONNECT_ERROR",
    "H2_ENHANCE_YOUR_CALM",
    "H2_FLOW_CONTROL_ERROR",
    "H2_FRAME_SIZE_ERROR",
    "H2_INTERNAL_ERROR",
    "H2_NO_ERROR",
    "H2_PROTOCOL_ERROR",
    "H2_REFUSED_STREAM",
    "H2_SETTINGS_TIMEOUT",
    "H2_STREAM_CLOSED",
    "AuthorityMismatch",
    "BadConnectRequest",
    "ConnectionFull",
    "ConnectionNotUsable",
    "HboneError",
    "HboneUsageError",
    "PeerLimitExceeded",
    "PeerProtocolError",
    "PolicyDenied",
    "StreamNotWritable",
    "UnknownDestination",
    "UnknownStream",
    "UpstreamUnreachable",
]


class HboneError(ZtError):
    """Base of every HBONE failure."""

    http_status = 503
    h2_error_code = H2_INTERNAL_ERROR
    reason = "hbone_error"


class BadConnectRequest(HboneError):
    """A CONNECT request that is malformed; the message names the header, the value and the rule."""

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR
    reason = "bad_request"

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: got {value!r}, expected {expected}")


class AuthorityMismatch(HboneError):
    """The `:authority` IP is not the pod this connection reached."""

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR
    reason = "authority_mismatch"


class PolicyDenied(HboneError):
    """An authorization policy denied the tunnel."""

    http_status = 401
    h2_error_code = H2_CONNECT_ERROR
    reason = "policy_denied"


class UnknownDestination(HboneError):
    """The destination is not a workload this node serves."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "unknown_destination"


class UpstreamUnreachable(HboneError):
    """Dialing the destination failed or timed out."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "upstream_unreachable"


class ConnectionFull(HboneError):
    """The client connection already carries min(100, peer's max) streams: dial another one."""

    http_status = 503
    h2_error_code = H2_REFUSED_STREAM
    reason = "connection_full"


class ConnectionNotUsable(HboneError):
    """The connection is draining, got a GOAWAY or is terminated: no new streams on it."""

    http_status = 503
    h2_error_code = H2_REFUSED_STREAM
    reason = "connection_not_usable"


class PeerProtocolError(HboneError):
    """The peer broke HTTP/2 (bad frame, flow-control violation, ...); the connection is gone."""

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR
    reason = "protocol_error"

    def __init__(self, message: str, h2_code: int = H2_PROTOCOL_ERROR) -> None:
        self.code = h2_code
        super().__init__(message)


class PeerLimitExceeded(PeerProtocolError):
    """The peer went past one of the connection's limits (`limit`: a zt.hbone.limits name, e.g.
    rapid_reset, header_block); the connection ended with GOAWAY(`code`)."""

    h2_error_code = H2_ENHANCE_YOUR_CALM
    reason = "limit_exceeded"

    def __init__(self, limit: str, detail: str, h2_code: int = H2_ENHANCE_YOUR_CALM) -> None:
        self.limit = limit
        super().__init__(f"{limit}: {detail}", h2_code)


class HboneUsageError(HboneError, UsageError):
    """The core's API was called wrongly (bad argument, wrong role)."""

    http_status = 400
    h2_error_code = H2_INTERNAL_ERROR
    reason = "bad_api_call"
    exit_code = 2


class UnknownStream(HboneUsageError):
    """An API call named a stream id this connection never had."""

    reason = "unknown_stream"


class StreamNotWritable(HboneUsageError):
    """Sending on a stream that was ended locally, reset, refused or not yet answered. A relay
    meets it when racing a peer's RST_STREAM; then the stream is over anyway."""

    h2_error_code = H2_CANCEL
    reason = "stream_not_writable"
