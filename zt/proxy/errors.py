"""Failures of the asyncio HBONE data plane. Each derives from the zt error tree and carries its
CONNECT status, RST_STREAM code and log reason; OSError/ssl errors are translated here, once."""

from __future__ import annotations

from zt.errors import H2_CANCEL, H2_CONNECT_ERROR, H2_REFUSED_STREAM, ZtError


class ProxyError(ZtError):
    """Base of the data plane's own failures."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "proxy_error"


class TunnelRefused(ProxyError):
    """Client: the HBONE server answered the CONNECT with a non-200 status."""

    reason = "tunnel_refused"

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"CONNECT refused: status {status}" + (f" ({detail})" if detail else ""))


class StreamResetError(ProxyError):
    """The HBONE stream was reset (RST_STREAM from the peer, or the connection went away).

    RFC 9113 §8.5: "A proxy treats any error in the TCP connection [...] as a stream error of type
    CONNECT_ERROR" — the TCP side of the relay is then reset too.
    """

    reason = "stream_reset"

    def __init__(self, stream_id: int, code: int) -> None:
        self.stream_id = stream_id
        self.code = code
        super().__init__(f"stream {stream_id} reset with HTTP/2 error code {code:#x}")


class ConnectionLost(StreamResetError):
    """The TLS connection carrying the HBONE streams closed or broke: every stream on it is reset
    (so relays treat it like a reset: RST on the TCP side)."""

    h2_error_code = H2_CANCEL
    reason = "connection_lost"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        ProxyError.__init__(self, f"HBONE connection lost: {detail}")
        self.stream_id = 0
        self.code = H2_CONNECT_ERROR


class DialFailed(ProxyError):
    """Opening the TLS connection to an HBONE server failed (refused, timeout, TLS refusal)."""

    h2_error_code = H2_REFUSED_STREAM
    reason = "dial_failed"

    def __init__(self, target: str, detail: str) -> None:
        self.target = target
        self.detail = detail
        super().__init__(f"dial {target}: {detail}")


class InternalError(ProxyError):
    """An admission hook or dialer raised something that is not a zt error (a bug): the tunnel
    is answered 503 rather than left hanging."""

    reason = "internal_error"
