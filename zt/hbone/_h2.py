"""The h2 boundary: configuring `H2Connection` for HBONE and neutralising two h2 behaviours.

1. docs/design.md §2: h2 calls `repr()` of every received frame for a trace log even when logging is off,
   and hyperframe's DATA repr hex-encodes the whole payload (over half the CPU at 1 MiB frames).
   `H2Connection._receive_frame` evaluates `repr(frame)` before calling the logger, so a no-op
   logger cannot help; DATA frames get a constant-time body repr instead (hyperframe's own extension
   point, `_body_repr`, which every other frame class overrides already).
2. h2 treats a received GOAWAY as the end of everything: its state machine goes CLOSED, queued output
   is discarded, and later DATA on surviving streams raises ProtocolError. RFC 9113 §6.8 says the
   opposite: "Activity on streams numbered lower than or equal to the last stream identifier might
   still complete successfully." `HboneH2Connection` reports the GOAWAY and leaves the state alone;
   the HBONE core enforces "no new streams" itself.
3. The outbound DATA fast path (DATA frames without per-frame object churn):
   h2 still decides (stream states, flow-control windows), but serialising goes through
   `_prepare_for_sending`, which here frames DATA with a 9-byte header (RFC 9113 §4.1) and keeps the
   payload object as is instead of copying it three times (`serialize_body` join, header join,
   `_data_to_send +=`, `bytes(...)`). Output is a list of chunks for `transport.writelines`: small
   frames are coalesced into one buffer (one TLS record, not one per frame), a large payload rides
   along with only its first `COALESCE` bytes copied.
4. Held payloads: a DATA payload that is not in memory (`HeldPayload`, the bytes wait in a pipe for
   splice(2), zt/proxy/zerocopy.py). h2 only needs its length (flow control, frame size); the
   frame's 9-byte header goes out as bytes and the payload object itself takes its place in the
   output, for the transport to move.
"""

from __future__ import annotations

import struct

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated as H2ConnectionTerminated
from h2.events import Event as H2Event
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from zt.hbone._hpack import LiteralEncoder
from zt.hbone._inbound import install as install_inbound_buffer
from zt.hbone.errors import HboneUsageError
from zt.hbone.limits import FrameGuard
from zt.hbone.settings import DEFAULT_WINDOW, HboneSettings

# RFC 9113 §4.1: "Length (24), Type (8), Flags (8), Reserved (1), Stream Identifier (31)".
_HEADER = struct.Struct(">HBBBL")
_DATA_TYPE = 0x0
_END_STREAM = 0x1
# Bytes copied into the shared buffer before a large payload is passed on by reference: one TLS
# record's worth (RFC 8446 §5.1: at most 2^14 bytes per record), so framing adds no extra record.
COALESCE = 16384


class HeldPayload:
    """`size` DATA payload bytes held outside the process by `source` (opaque here: the transport
    that finds it among the chunks to send moves the bytes itself, zt/proxy/tlssocket.py)."""

    __slots__ = ("size", "source")

    def __init__(self, size: int, source: object) -> None:
        self.size = size
        self.source = source

    def __len__(self) -> int:
        return self.size


Chunk = bytes | memoryview | HeldPayload


def _data_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


setattr(DataFrame, "_body_repr", _data_body_repr)  # noqa: B010 (mypy forbids method assignment)


class HboneH2Connection(H2Connection):
    """H2Connection whose GOAWAY handling follows RFC 9113 §6.8 and whose output is a list of
    chunks with DATA payloads passed by reference (see module docstring)."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self._chunks: list[Chunk] = []
        self._small = bytearray()

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        self._take_raw()
        small = self._small
        for frame in frames:
            if type(frame) is not DataFrame or "PADDED" in frame.flags:  # h2 pads: its serialiser
                small += frame.serialize()
                continue
            payload = frame.data
            size = len(payload)
            flags = _END_STREAM if "END_STREAM" in frame.flags else 0
            frame.body_len = size
            small += _HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE, flags, frame.stream_id)
            held: object = payload  # h2 passed our HeldPayload on as it got it (send_held)
            if type(held) is HeldPayload:
                self._chunks.append(bytes(small))
                small.clear()
                self._chunks.append(held)
                continue
            if size <= COALESCE:
                small += payload
                continue
            view = memoryview(payload)
            small += view[:COALESCE]
            self._chunks.append(bytes(small))
            small.clear()
            self._chunks.append(view[COALESCE:])

    def _take_raw(self) -> None:
        """h2 writes its preamble straight into `_data_to_send`: keep it in order."""
        if self._data_to_send:
            self._small += self._data_to_send
            self._data_to_send = bytearray()

    def output(self) -> list[Chunk]:
        """Everything queued for the peer, in order, cleared, held payloads included."""
        self._take_raw()
        if self._small:
            self._chunks.append(bytes(self._small))
            self._small.clear()
        chunks, self._chunks = self._chunks, []
        return chunks

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """Everything queued for the peer, in order, cleared (for `transport.writelines`)."""
        chunks = self.output()
        held = [chunk for chunk in chunks if type(chunk) is HeldPayload]
        if held:
            raise HboneUsageError(f"{len(held)} held payloads queued: take them with output()")
        return chunks  # type: ignore[return-value]  # no HeldPayload: checked above

    def data_to_send(self, amount: int | None = None) -> bytes:
        out = b"".join(self.chunks_to_send())
        if amount is not None and amount < len(out):
            self._small += out[amount:]
            out = out[:amount]
        return out

    def clear_outbound_data_buffer(self) -> None:
        super().clear_outbound_data_buffer()
        self._chunks = []
        self._small.clear()

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


def new_h2(
    client: bool, settings: HboneSettings, guard: FrameGuard | None = None
) -> HboneH2Connection:
    """An initiated H2Connection with HBONE's settings and `guard`'s frame limits (limits.py);
    its preamble/SETTINGS are queued."""
    config = H2Configuration(
        client_side=client,
        header_encoding=None,
        # The server validates CONNECT requests itself (request.py) so that a malformed request costs
        # one stream (RFC 9113 §8.1.1: "a stream error"), not the whole connection as in h2.
        validate_inbound_headers=client,
        # zt writes every header block it sends itself (ConnectRequest validates its fields,
        # response_headers its status): h2's outbound checks would only repeat ours on the hot
        # path of every tunnel (about 5 % of the core's time per tunnel, measured).
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = HboneH2Connection(config=config)
    conn.encoder = LiteralEncoder()  # no dynamic table, no Huffman: zt/hbone/_hpack.py
    if not install_inbound_buffer(conn, guard, fast=settings.inbound_fast_path):
        # Without our frame buffer none of the frame limits would apply (frame size before the
        # body, header-block cap, control-frame budgets): refuse to run rather than fail open.
        raise HboneUsageError(
            "h2's FrameBuffer is not the one zt was written against (h2 4.4): frame limits "
            "cannot be installed"
        )
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
    # docs/design.md §2: A client that advertises MAX_FRAME_SIZE must also raise
    # `H2Connection.max_inbound_frame_size` (h2 only raises it on SETTINGS ACK).
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
