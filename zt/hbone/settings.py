"""HTTP/2 settings and timers of an HBONE connection, with ztunnel's values as defaults.

docs/design.md §2: HTTP/2 settings as ztunnel: stream window 4 MiB, connection window 16 MiB,
MAX_FRAME_SIZE 1 MiB advertised, client at most 100 streams per connection, server advertises 200,
no push. [...] PING every 10 s, drop after 20 s without answer. §2 pooling: "idle connections close
after 5 min".
"""

from __future__ import annotations

from dataclasses import dataclass

from zt.errors import UsageError

KiB = 1024
MiB = 1024 * KiB

# RFC 9113 §6.5.2: SETTINGS_MAX_FRAME_SIZE "MUST be between the initial value (2^14) and the maximum
# allowed frame size (2^24-1)"; §6.9.1: "A sender MUST NOT allow a flow-control window to exceed
# 2^31-1 octets".
MIN_FRAME_SIZE = 2**14
MAX_FRAME_SIZE = 2**24 - 1
MAX_WINDOW = 2**31 - 1
# RFC 9113 §6.9.2: the connection window starts at 65,535 whatever SETTINGS say.
DEFAULT_WINDOW = 65_535


@dataclass(frozen=True)
class HboneSettings:
    """Everything tunable about one HBONE connection. Times are seconds."""

    stream_window: int = 4 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 1 * MiB
    client_max_streams: int = 100
    server_max_streams: int = 200
    # Advertised SETTINGS_MAX_HEADER_LIST_SIZE, and the cap on a received header block's bytes
    # (HEADERS + CONTINUATION) checked before any HPACK decoding: a CONNECT request is well
    # under 1 KiB; Envoy's default max_request_headers_kb is 60.
    max_header_list_size: int = 64 * KiB
    ping_interval: float | None = 10.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = 300.0  # a client's only: a server never closes an idle connection
    # The inbound DATA fast path (zt/hbone/_inbound.py); False: h2 parses every frame (the frame
    # limits of zt/hbone/limits.py apply either way).
    inbound_fast_path: bool = True
    # -- limits against an abusive authenticated peer (zt/hbone/limits.py) -----------------------
    # Time after the TLS handshake for the peer's HTTP/2 preface + SETTINGS (RFC 9113 §3.4: "This
    # sequence MUST be followed by a SETTINGS frame"). A legitimate client sends both right after its
    # handshake, in the same flight; the TLS handshake has its own deadline. A few seconds leave
    # room for a loaded node, not for a peer that holds connections open while sending nothing.
    preface_timeout: float | None = 5.0
    # CONNECTs not yet answered (dials in flight) per connection; past it REFUSED_STREAM. zt's
    # client opens at most 100 streams per connection, so a full legitimate client never hits it;
    # a blackholed destination then costs at most this many sockets per connection.
    max_pending_connects: int = 100
    # Streams the peer resets before we answered them, per second (a token bucket holding one
    # second's worth); past it GOAWAY(ENHANCE_YOUR_CALM): the CVE-2023-44487 "rapid reset"
    # mitigation (Envoy's own fix closes connections whose premature resets dominate). A reset
    # after our answer is an ordinary tunnel end and does not count.
    max_premature_resets_per_second: float = 100.0
    # PING, SETTINGS and PRIORITY frames per second (frames that make us reply or do nothing for
    # a tunnel); past it GOAWAY(ENHANCE_YOUR_CALM). Envoy caps queued outbound control frames at
    # 1000 (`max_outbound_control_frames`); zt itself sends one PING per ping_interval.
    control_frames_per_second: float = 1000.0
    # SETTINGS frames per second: a legitimate peer sends one or two per connection. Each change
    # may wake writers, so these are rate-limited far below the other control frames.
    settings_per_second: float = 10.0
    # The adapter stops reading from a peer while more than this waits in the TLS write buffer
    # (zt/proxy/driver.py): what the peer asks for (PING/SETTINGS ACKs, WINDOW_UPDATEs) is not
    # queued without bound while it does not read. Twice the driver's 4 MiB high-water mark,
    # where relays stop writing DATA (driver.py says why not at the mark itself).
    write_buffer_limit: int = 8 * MiB
    # Frames handled per receive_data call; the rest waits in the receive buffer for the next
    # call (`HboneConnection.input_pending`). Tiny frames (1-byte DATA, WINDOW_UPDATEs) cost
    # 10-20 µs each: a 256 KiB read of them would hold the event loop, and every other connection
    # of the process, for a quarter of a second. 256 frames are a few ms; large DATA frames never
    # come near it (256 x 16 KiB is 4 MiB).
    max_frames_per_call: int = 256

    def __post_init__(self) -> None:
        _check_range("stream_window", self.stream_window, DEFAULT_WINDOW, MAX_WINDOW)
        _check_range("connection_window", self.connection_window, DEFAULT_WINDOW, MAX_WINDOW)
        _check_range("max_frame_size", self.max_frame_size, MIN_FRAME_SIZE, MAX_FRAME_SIZE)
        _check_range("client_max_streams", self.client_max_streams, 1, MAX_WINDOW)
        _check_range("server_max_streams", self.server_max_streams, 1, MAX_WINDOW)
        _check_range("max_header_list_size", self.max_header_list_size, 1024, MAX_WINDOW)
        for name in ("ping_interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"HboneSettings.{name}: got {value!r}, expected > 0 or None")
        _check_range("max_pending_connects", self.max_pending_connects, 1, MAX_WINDOW)
        _check_range("write_buffer_limit", self.write_buffer_limit, 4 * KiB, MAX_WINDOW)
        _check_range("max_frames_per_call", self.max_frames_per_call, 1, MAX_WINDOW)
        for name in (
            "max_premature_resets_per_second",
            "control_frames_per_second",
            "settings_per_second",
        ):
            if not getattr(self, name) >= 1:
                raise UsageError(
                    f"HboneSettings.{name}: got {getattr(self, name)!r}, expected >= 1"
                )
        if self.preface_timeout is not None and not self.preface_timeout > 0:
            raise UsageError(
                f"HboneSettings.preface_timeout: got {self.preface_timeout!r}, expected > 0 or None"
            )
        if not self.ping_timeout > 0:
            raise UsageError(f"HboneSettings.ping_timeout: got {self.ping_timeout!r}, expected > 0")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UsageError(f"HboneSettings.{name}: got {value!r}, expected {low}..{high}")
