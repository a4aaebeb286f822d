"""Hypothesis over the frame limits: whatever frame headers and bodies a peer sends, in whatever
pieces, the core never raises, never holds more than one frame's worth of unparsed bytes nor more
than the header-block cap of undecoded header fragments, and a connection it ended ends with a
GOAWAY carrying the limit's code."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zt.hbone import HboneConnection, HboneSettings
from zt.hbone.events import ConnectionTerminated, LimitHit

FUZZ = settings(
    max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
LIMITS = HboneSettings(
    max_frame_size=16_384,
    max_header_list_size=4096,
    control_frames_per_second=50,
    settings_per_second=5,
    max_premature_resets_per_second=5,
    max_pending_connects=3,
    ping_interval=None,
    idle_timeout=None,
)
KNOWN_LIMITS = {"frame_size", "header_block", "control_frames", "settings_rate", "rapid_reset"}


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x4, 0x6, 0x8, 0x9, 0xFA]))
    flags = draw(st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x8]))
    stream_id = draw(st.sampled_from([0, 1, 1, 3, 5]))
    body = draw(st.binary(max_size=40))
    declared = draw(st.one_of(st.just(len(body)), st.integers(0, 2**24 - 1)))
    head = struct.pack(">HBBBL", declared >> 8, declared & 0xFF, kind, flags, stream_id)
    return head + body


@FUZZ
@given(
    frames=st.lists(frame(), max_size=40),
    cuts=st.lists(st.integers(1, 64), max_size=20),
    fast_path=st.booleans(),
)
def test_limits_hold_for_any_frames(frames: list[bytes], cuts: list[int], fast_path: bool) -> None:
    settings_ = HboneSettings(**{**LIMITS.__dict__, "inbound_fast_path": fast_path})
    conn = HboneConnection("server", now=0.0, settings=settings_)
    conn.data_to_send()
    wire = PREFACE + b"".join(frames)
    events = []
    offset = 0
    for piece in [*cuts, len(wire)]:
        events += conn.receive_data(wire[offset : offset + piece], 0.0)
        offset += piece
        buffer = conn._h2.incoming_buffer
        unparsed = getattr(buffer, "_size", None)
        if unparsed is None:
            unparsed = len(buffer._data)
        # One partial frame at most: its header was checked against max_frame_size.
        assert unparsed <= 9 + settings_.max_frame_size + 64
        fragments = sum(len(f.data) for f in buffer._headers_buffer)
        assert fragments <= settings_.max_header_list_size
        if conn.closed:
            break
    hits = [e for e in events if isinstance(e, LimitHit)]
    assert {h.limit for h in hits if h.fatal} <= KNOWN_LIMITS
    if any(h.fatal for h in hits):
        assert isinstance(events[-1], ConnectionTerminated)
    assert sum(conn.limit_hits.values()) == len(hits)
