"""The h2 boundary: configuring `H2Connection` for HBONE and neutralising two h2 behaviours.

1. DESIGN.md §2: "h2 calls `repr()` of every received frame for a trace log even when logging is off,
   and hyperframe's DATA repr hex-encodes the whole payload (over half the CPU at 1 MiB frames)."
   `H2Connection._receive_frame` evaluates `repr(frame)` before calling the logger, so a no-op
   logger cannot help; DATA frames get a constant-time body repr instead (hyperframe's own extension
   point, `_body_repr`, which every other frame class overrides already).
2. h2 treats a received GOAWAY as the end of everything: its state machine goes CLOSED, queued output
   is discarded, and later DATA on surviving streams raises ProtocolError. RFC 9113 §6.8 says the
   opposite: "Activity on streams numbered lower than or equal to the last stream identifier might
   still complete successfully." `HboneH2Connection` reports the GOAWAY and leaves the state alone;
   the HBONE core enforces "no new streams" itself.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated as H2ConnectionTerminated
from h2.events import Event as H2Event
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from zt.hbone.settings import DEFAULT_WINDOW, HboneSettings


def _data_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


setattr(DataFrame, "_body_repr", _data_body_repr)  # noqa: B010 (mypy forbids method assignment)


class HboneH2Connection(H2Connection):
    """H2Connection whose GOAWAY handling follows RFC 9113 §6.8 (see module docstring)."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[H2Event]]:
        event = H2ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def send_goaway_keep_open(self, last_stream_id: int, error_code: int) -> None:
        """Queue a GOAWAY without h2's CLOSED transition, so streams ≤ last_stream_id may finish
        (RFC 9113 §6.8: "the sender [...] can still complete work on streams with lower IDs")."""
        frame = GoAwayFrame(stream_id=0)
        frame.last_stream_id = last_stream_id
        frame.error_code = error_code
        self._prepare_for_sending([frame])


def new_h2(client: bool, settings: HboneSettings) -> HboneH2Connection:
    """An initiated H2Connection with HBONE's settings; its preamble/SETTINGS are queued."""
    config = H2Configuration(
        client_side=client,
        header_encoding=None,
        # The server validates CONNECT requests itself (request.py) so that a malformed request costs
        # one stream (RFC 9113 §8.1.1: "a stream error"), not the whole connection as in h2.
        validate_inbound_headers=client,
    )
    conn = HboneH2Connection(config=config)
    max_streams = settings.client_max_streams if client else settings.server_max_streams
    values: dict[SettingCodes, int] = {
        SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
        SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
        SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
        SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
    }
    if client:
        values[SettingCodes.ENABLE_PUSH] = 0  # "no push"
    conn.local_settings = Settings(client=client, initial_values=values)
    # DESIGN.md §2: "A client that advertises MAX_FRAME_SIZE must also raise
    # `H2Connection.max_inbound_frame_size`" (h2 only raises it on SETTINGS ACK).
    conn.max_inbound_frame_size = settings.max_frame_size
    # Same for the HPACK decoder's header list limit (h2 applies it on ACK of a *changed* value,
    # and our values are current from the start).
    conn.decoder.max_header_list_size = settings.max_header_list_size
    conn.initiate_connection()
    if not client:
        # h2 answers a HEADERS beyond our advertised MAX_CONCURRENT_STREAMS with a connection error;
        # RFC 9113 §5.1.2 asks for "a stream error [...] of type PROTOCOL_ERROR or REFUSED_STREAM".
        # The advertisement above is already serialized; lift h2's own check and let the core
        # refuse the extra stream (connection.py, `_on_request`).
        unlimited = {**values, SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1}
        conn.local_settings = Settings(client=False, initial_values=unlimited)
    # RFC 9113 §6.9.2: the connection window starts at 65,535 and only grows by WINDOW_UPDATE.
    if settings.connection_window > DEFAULT_WINDOW:
        conn.increment_flow_control_window(settings.connection_window - DEFAULT_WINDOW)
    return conn
