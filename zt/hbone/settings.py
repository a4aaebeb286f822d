"""HTTP/2 settings and timers of an HBONE connection, with ztunnel's values as defaults.

DESIGN.md §2: "HTTP/2 settings as ztunnel: stream window 4 MiB, connection window 16 MiB,
MAX_FRAME_SIZE 1 MiB advertised, client at most 100 streams per connection, server advertises 200,
no push. [...] PING every 10 s, drop after 20 s without answer." §2 pooling: "idle connections close
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
    max_header_list_size: int = 64 * KiB
    ping_interval: float | None = 10.0
    ping_timeout: float = 20.0
    idle_timeout: float | None = 300.0
    # Issue 8's inbound DATA fast path (zt/hbone/_inbound.py); False: h2 parses every frame.
    inbound_fast_path: bool = True

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
        if not self.ping_timeout > 0:
            raise UsageError(f"HboneSettings.ping_timeout: got {self.ping_timeout!r}, expected > 0")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UsageError(f"HboneSettings.{name}: got {value!r}, expected {low}..{high}")
