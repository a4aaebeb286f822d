"""The inbound DATA fast path (it "parses DATA frames without per-frame object churn
(memoryview / bytearray, no repr), while h2 keeps the connection state and control frames").

`InboundBuffer` replaces h2's `FrameBuffer` (the iterator `H2Connection.receive_data` pulls frames
from). It keeps received chunks as a queue of read-only views instead of copying them into one
bytearray, and scans them frame by frame:

- An unpadded DATA frame on a non-zero stream becomes an `InboundData`: a 4-slot object whose
  payload is a slice of the received chunk (or one join when the frame spans chunks), built from
  the 9-byte header alone (RFC 9113 §4.1: "Length (24), Type (8), Flags (8), Reserved (1), Stream
  Identifier (31)"). No hyperframe `DataFrame`, no `Flags` object, no `parse_body` copies.
- Every other frame (HEADERS, CONTINUATION, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY,
  PRIORITY, unknown types, PADDED DATA, DATA on stream 0) is parsed by h2's own `FrameBuffer`
  code on exactly that frame's bytes.

h2 still receives every frame, in order, through its own `receive_data` loop and `_receive_frame`:
`InboundData` is dispatched to h2's `_receive_data_frame`, which does the connection state check,
both flow-control windows (`window_consumed`: FLOW_CONTROL_ERROR on over-window data), the stream
state machine (END_STREAM closes the remote side; DATA on closed or unknown streams gets h2's own
RST_STREAM or connection error) and queues its WINDOW_UPDATEs. So errors, events and emitted
bytes are h2's by construction; only the parsing and the copies are ours. The checks h2's
`FrameBuffer.__next__` makes are kept in its order: header parse, completeness, length limit,
header-block continuity (`_update_header_buffer`).

One check is ours and comes first, in both this buffer and `GuardedFrameBuffer` (h2's parser
without the fast path): the `FrameGuard` (limits.py) sees each 9-byte header before the body is
waited for, so an overlong frame or header block is refused with nine bytes read, not after its
body was buffered (h2 checks the length only once the whole frame is in).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import cast

from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import Frame

from zt.hbone.limits import FrameGuard

_HEADER = struct.Struct(">HBBBL")
_DATA = 0x0
_END_STREAM = 0x1
_PADDED = 0x8
# RFC 9113 §4.1: the reserved bit "MUST be ignored when receiving".
_STREAM_MASK = 0x7FFFFFFF
# A payload is passed on as a view of its chunk only when it is at least 1/PIN_RATIO of it:
# a view keeps the whole chunk alive, and flow control only bounds the payload bytes. A peer
# sending one small DATA frame per large chunk must not pin more than PIN_RATIO x the windows.
PIN_RATIO = 4
_END = frozenset({"END_STREAM"})
_NO_FLAGS: frozenset[str] = frozenset()


class InboundData:
    """A received unpadded DATA frame, as h2's `_receive_data_frame` reads one (`stream_id`,
    `data`, `flags`, `flow_controlled_length`). Constant-time repr (docs/design.md §2: h2 calls
    `repr()` of every received frame)."""

    __slots__ = ("data", "flags", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flags = _END if end_stream else _NO_FLAGS
        # RFC 9113 §6.1: "The entire DATA frame payload is included in flow control"; unpadded.
        self.flow_controlled_length = len(data)

    def __repr__(self) -> str:
        return f"InboundData(stream_id={self.stream_id}, <{len(self.data)} bytes>)"


class InboundBuffer(FrameBuffer):
    """h2's frame iterator with the DATA fast path (see the module docstring)."""

    def __init__(self, server: bool, guard: FrameGuard | None = None) -> None:
        super().__init__(server=server)
        self._chunks: deque[memoryview] = deque()
        self._size = 0
        # Frame-level limits (zt/hbone/limits.py), checked on each 9-byte header before the body
        # is waited for.
        self.guard = guard

    def add_data(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        if self._preamble_len:
            # h2 checks (and strips) the client preface, RFC 9113 §3.4; it appends what follows
            # to its bytearray, which we move to the queue once.
            super().add_data(data)
            view = memoryview(bytes(self._data))
            self._data = bytearray()
        else:
            view = memoryview(data)
            if type(view.obj) is not bytes:
                # Only immutable bytes may be kept by reference: the caller may reuse its buffer.
                view = memoryview(view.tobytes())
        if view.nbytes:
            self._chunks.append(view.cast("B"))
            self._size += view.nbytes

    @property
    def pending_bytes(self) -> int:
        """Received bytes not yet handed to h2 (a partial frame, or frames over the budget)."""
        return self._size

    def __next__(self) -> Frame:
        if self._size < 9 or (self.guard is not None and not self.guard.spend_frame()):
            raise StopIteration
        head = self._peek_header()
        high, low, kind, flags, stream_id = _HEADER.unpack(head)
        length = (high << 8) + low
        stream_id &= _STREAM_MASK
        if self.guard is not None:
            # RFC 9113 §4.2: FRAME_SIZE_ERROR "if a frame exceeds the size defined in
            # SETTINGS_MAX_FRAME_SIZE": decided on the header, before the body is buffered.
            self.guard.inspect(kind, length, self.max_frame_size)
        if kind != _DATA or flags & _PADDED or not stream_id:
            return self._by_h2(head, length, kind, flags)
        if self._size < 9 + length:
            raise StopIteration
        self._validate_frame_length(length)
        frame = InboundData(stream_id, self._payload(length), bool(flags & _END_STREAM))
        # Raises h2's "Invalid frame during header block" when a HEADERS block is unfinished.
        self._update_header_buffer(cast(Frame, frame))
        return cast(Frame, frame)

    def _by_h2(self, head: bytes | memoryview, length: int, kind: int, flags: int) -> Frame:
        """Let h2's FrameBuffer parse this frame from a bytearray holding exactly its bytes."""
        if self._size < 9 + length:
            # h2 parses the header (and raises on a bad one) before it waits for the body.
            self._data = bytearray(head)
            try:
                super().__next__()
            finally:
                self._data = bytearray()
            raise StopIteration  # pragma: no cover (length > 0: h2 stopped above)
        self._data = bytearray(self._take(9 + length))
        if self.guard is not None:
            self.guard.consumed(kind, flags, length)
        return super().__next__()

    def _peek_header(self) -> bytes | memoryview:
        first = self._chunks[0]
        if len(first) >= 9:
            return first[:9]
        head = bytearray()
        for chunk in self._chunks:
            head += chunk[: 9 - len(head)]
            if len(head) == 9:
                break
        return bytes(head)

    def _payload(self, length: int) -> bytes | memoryview:
        """Consume the frame; its payload by reference when that pins little (PIN_RATIO)."""
        frame = self._take(9 + length)
        if not length:
            return b""
        payload = frame[9:]
        if length * PIN_RATIO >= len(cast(bytes, payload.obj)):
            return payload
        return payload.tobytes()

    def _take(self, n: int) -> memoryview:
        """Remove the first n bytes: a slice of one chunk, or one join across chunks."""
        self._size -= n
        first = self._chunks[0]
        if len(first) > n:
            self._chunks[0] = first[n:]
            return first[:n]
        if len(first) == n:
            return self._chunks.popleft()
        parts: list[memoryview] = []
        while n:
            chunk = self._chunks.popleft()
            if len(chunk) > n:
                self._chunks.appendleft(chunk[n:])
                chunk = chunk[:n]
            parts.append(chunk)
            n -= len(chunk)
        return memoryview(b"".join(parts))


class GuardedFrameBuffer(FrameBuffer):
    """h2's own FrameBuffer (no fast path) with the frame limits of a `FrameGuard` applied to each
    9-byte header before h2 waits for the body."""

    def __init__(self, server: bool, guard: FrameGuard) -> None:
        super().__init__(server=server)
        self.guard = guard

    @property
    def pending_bytes(self) -> int:
        return len(self._data)

    def __next__(self) -> Frame:
        if len(self._data) >= 9:
            if not self.guard.spend_frame():
                raise StopIteration
            high, low, kind, flags, _ = _HEADER.unpack_from(self._data)
            length = (high << 8) + low
            self.guard.inspect(kind, length, self.max_frame_size)
            if len(self._data) >= 9 + length:
                self.guard.consumed(kind, flags, length)
        return super().__next__()


def install(conn: H2Connection, guard: FrameGuard | None = None, *, fast: bool = True) -> bool:
    """Switch `conn`'s receive side (before any byte was received) to the DATA fast path when
    `fast`, else to h2's parser with `guard`'s limits (when given). Returns False, leaving h2 as it
    is, when h2's FrameBuffer is not the one this was written against (h2 4.4: a `_data`
    bytearray; older 4.x kept `data` bytes)."""
    if not isinstance(getattr(conn.incoming_buffer, "_data", None), bytearray):
        return False
    server = not conn.config.client_side
    max_frame_size = conn.incoming_buffer.max_frame_size
    if not fast:
        if guard is not None:
            conn.incoming_buffer = GuardedFrameBuffer(server, guard)
            conn.incoming_buffer.max_frame_size = max_frame_size
        return True
    conn.incoming_buffer = InboundBuffer(server=server, guard=guard)
    conn.incoming_buffer.max_frame_size = max_frame_size
    # h2 dispatches on `frame.__class__`; InboundData goes where hyperframe's DataFrame goes.
    conn._frame_dispatch_table[cast(type[Frame], InboundData)] = conn._receive_data_frame
    return True
