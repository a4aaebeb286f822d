"""Limits against an authenticated abusive peer, on the sans-IO core with a fake clock: raw frames
built with hyperframe/hpack go in; the bytes zt answers, the events and the counters come out."""

from __future__ import annotations

import struct

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.unit.hbone.frames import PREFACE, decode
from tests.unit.hbone.pair import Pair
from zt.hbone import HboneConnection, HboneSettings
from zt.hbone.errors import (
    H2_CANCEL,
    H2_ENHANCE_YOUR_CALM,
    H2_FRAME_SIZE_ERROR,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    PeerLimitExceeded,
)
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    Event,
    LimitHit,
    StreamReset,
    WindowOpened,
)
from zt.hbone.limits import RateBudget
from zt.hbone.settings import KiB, MiB

QUIET = {"ping_interval": None, "idle_timeout": None, "preface_timeout": None}
CONNECT = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", "10.1.2.3:80")])


def server(now: float = 0.0, **overrides: object) -> HboneConnection:
    """A server core that already read a client preface + SETTINGS; its own output flushed."""
    settings = HboneSettings(**{**QUIET, **overrides})  # type: ignore[arg-type]
    conn = HboneConnection("server", now=now, settings=settings)
    assert conn.receive_data(PREFACE + SettingsFrame(0).serialize(), now) == []
    conn.data_to_send()
    return conn


def connect(stream_id: int) -> bytes:
    frame = HeadersFrame(stream_id, CONNECT)
    frame.flags.add("END_HEADERS")
    return frame.serialize()


def reset(stream_id: int, code: int = H2_CANCEL) -> bytes:
    return RstStreamFrame(stream_id, error_code=code).serialize()


def header(length: int, kind: int, flags: int = 0, stream_id: int = 1) -> bytes:
    """A bare 9-byte frame header (RFC 9113 §4.1) declaring `length` bytes that never follow."""
    return struct.pack(">HBBBL", length >> 8, length & 0xFF, kind, flags, stream_id)


def goaway_codes(wire: bytes) -> list[int]:
    return [f.error_code for f in decode(wire) if isinstance(f, GoAwayFrame)]


def fatal(events: list[Event], limit: str) -> ConnectionTerminated:
    """The events of a connection ended by `limit`: LimitHit, then ConnectionTerminated."""
    hits = [e for e in events if isinstance(e, LimitHit)]
    assert [(h.limit, h.fatal) for h in hits] == [(limit, True)]
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert isinstance(terminated.error, PeerLimitExceeded)
    assert terminated.error.limit == limit
    assert terminated.error.code == terminated.error_code
    return terminated


# ------------------------------------------------------------------ frame size (RFC 9113 §4.2)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("kind", [0x0, 0x1, 0x8, 0xFA])  # DATA, HEADERS, WINDOW_UPDATE, unknown
def test_a_frame_over_max_frame_size_is_refused_on_its_9_byte_header(
    kind: int, fast_path: bool
) -> None:
    conn = server(inbound_fast_path=fast_path)
    # 16 MiB declared against our advertised 1 MiB: only the header is ever sent.
    events = conn.receive_data(header(16 * MiB - 1, kind), 1.0)
    terminated = fatal(events, "frame_size")
    assert (terminated.reason, terminated.error_code) == ("limit_exceeded", H2_FRAME_SIZE_ERROR)
    assert goaway_codes(conn.data_to_send()) == [H2_FRAME_SIZE_ERROR]
    assert conn.limit_hits == {"frame_size": 1}


def test_a_frame_at_max_frame_size_waits_for_its_body() -> None:
    conn = server(max_frame_size=16 * KiB)
    assert conn.receive_data(header(16 * KiB, 0x0), 1.0) == []
    assert not conn.closed


# ------------------------------------------------------------------ header blocks, before HPACK


@pytest.mark.parametrize("fast_path", [True, False])
def test_continuation_flood_is_refused_before_its_body_and_before_decoding(
    fast_path: bool,
) -> None:
    conn = server(inbound_fast_path=fast_path)  # max_header_list_size 64 KiB
    # Not valid HPACK: had any of it been decoded, this would end in COMPRESSION_ERROR.
    junk = b"\xff" * (16 * KiB)
    first = HeadersFrame(1, junk)  # no END_HEADERS: CONTINUATION frames follow
    assert conn.receive_data(first.serialize(), 1.0) == []
    for _ in range(3):  # 64 KiB in all: at the cap, not over it
        assert conn.receive_data(ContinuationFrame(1, junk).serialize(), 1.0) == []
    events = conn.receive_data(header(1, 0x9), 1.0)  # one more byte declared
    terminated = fatal(events, "header_block")
    assert terminated.error_code == H2_ENHANCE_YOUR_CALM
    assert goaway_codes(conn.data_to_send()) == [H2_ENHANCE_YOUR_CALM]
    assert conn.limit_hits == {"header_block": 1}


def test_one_large_headers_frame_is_refused_on_its_header() -> None:
    # The 1 MiB Huffman-coded header: refused from its 9-byte header, nothing decoded.
    conn = server()
    events = conn.receive_data(header(1 * MiB, 0x1, flags=0x4), 1.0)
    assert fatal(events, "header_block").error_code == H2_ENHANCE_YOUR_CALM


def test_header_blocks_are_counted_per_block() -> None:
    conn = server(max_header_list_size=2 * KiB)
    for stream_id in range(1, 60, 2):  # 30 small requests: far more than 2 KiB in all
        events = conn.receive_data(connect(stream_id), 1.0)
        assert [type(e) for e in events] == [ConnectRequested]
    assert not conn.closed


# ------------------------------------------------------------------ rapid reset (CVE-2023-44487)


def test_connects_reset_in_the_same_bytes_never_reach_the_adapter() -> None:
    conn = server()
    batch = b"".join(connect(sid) + reset(sid) for sid in range(1, 100, 2))  # 50 streams
    assert conn.receive_data(batch, 1.0) == []
    assert conn.pending_connects == 0
    assert not conn.closed


def test_premature_resets_past_the_budget_end_the_connection() -> None:
    conn = server(max_premature_resets_per_second=100)
    batch = b"".join(connect(sid) + reset(sid) for sid in range(1, 2 * 101, 2))  # 101 streams
    events = conn.receive_data(batch, 1.0)
    assert [type(e) for e in events] == [LimitHit, ConnectionTerminated]  # no stream announced
    terminated = fatal(events, "rapid_reset")
    assert terminated.error_code == H2_ENHANCE_YOUR_CALM
    assert goaway_codes(conn.data_to_send()) == [H2_ENHANCE_YOUR_CALM]
    assert conn.limit_hits == {"rapid_reset": 1}


def test_the_reset_budget_refills_with_time() -> None:
    conn = server(max_premature_resets_per_second=100)
    sid = 1
    for second in range(5):  # 100 a second for 5 seconds: at the rate, never over it
        batch = b"".join(connect(sid + 2 * i) + reset(sid + 2 * i) for i in range(100))
        assert conn.receive_data(batch, 1.0 + second) == []
        sid += 200
    assert not conn.closed


def test_a_reset_after_the_answer_is_not_premature() -> None:
    conn = server(max_premature_resets_per_second=1)
    for sid in range(1, 21, 2):
        conn.receive_data(connect(sid), 1.0)
        conn.respond(sid, 200)
        events = conn.receive_data(reset(sid), 1.0)
        assert events == [StreamReset(sid, H2_CANCEL, after_end_stream=False, remote=True)]
    assert not conn.closed


def test_a_reset_in_a_later_batch_is_reported_and_counted() -> None:
    conn = server(max_premature_resets_per_second=1)
    conn.receive_data(connect(1) + connect(3), 1.0)
    assert conn.pending_connects == 2
    assert conn.receive_data(reset(1), 1.0) == [StreamReset(1, H2_CANCEL, False, remote=True)]
    assert conn.pending_connects == 1
    fatal(conn.receive_data(reset(3), 1.0), "rapid_reset")


# ------------------------------------------------------------------ dials in flight


def test_unanswered_connects_past_the_cap_are_refused_streams() -> None:
    conn = server(max_pending_connects=3)
    events = conn.receive_data(b"".join(connect(sid) for sid in (1, 3, 5, 7)), 1.0)
    assert [e.stream_id for e in events if isinstance(e, ConnectRequested)] == [1, 3, 5]
    hits = [e for e in events if isinstance(e, LimitHit)]
    assert [(h.limit, h.fatal) for h in hits] == [("pending_connects", False)]
    refused = [f for f in decode(conn.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in refused] == [(7, H2_REFUSED_STREAM)]
    assert conn.limit_hits == {"pending_connects": 1}
    conn.respond(1, 200)  # one answer frees one slot
    assert [type(e) for e in conn.receive_data(connect(9), 1.0)] == [ConnectRequested]
    assert not conn.closed


# ------------------------------------------------------------------ PING


def test_ping_payload_comes_from_the_injected_randomness() -> None:
    settings = HboneSettings(idle_timeout=None, preface_timeout=None)
    conn = HboneConnection("client", now=0.0, settings=settings, random_bytes=lambda n: b"R" * n)
    conn.data_to_send()
    conn.on_timer(10.0)
    pings = [f for f in decode(conn.data_to_send()) if isinstance(f, PingFrame)]
    assert [f.opaque_data for f in pings] == [b"RRRRRRRR"]


def test_ping_payloads_are_unpredictable_by_default() -> None:
    payloads = set()
    for _ in range(2):
        conn = HboneConnection("client", now=0.0, settings=HboneSettings(preface_timeout=None))
        conn.data_to_send()
        conn.on_timer(10.0)
        payloads |= {f.opaque_data for f in decode(conn.data_to_send()) if isinstance(f, PingFrame)}
    assert len(payloads) == 2


def test_a_guessed_ping_ack_does_not_keep_the_connection_alive() -> None:
    pair = Pair(
        client_settings=HboneSettings(idle_timeout=None),
        server_settings=HboneSettings(ping_interval=None),
    )
    pair.client.on_timer(10.0)
    pair.client.data_to_send()  # the PING is never delivered: the peer does not read
    for guess in (1, 2):  # what a counter would have been
        ack = PingFrame(0, opaque_data=guess.to_bytes(8, "big"))
        ack.flags.add("ACK")
        assert pair.client.receive_data(ack.serialize(), 11.0) == []
    events = pair.client.on_timer(30.0)
    assert events == [ConnectionTerminated("ping_timeout", H2_NO_ERROR)]


# ------------------------------------------------------------------ control frames, SETTINGS


def test_a_ping_flood_past_the_budget_ends_in_enhance_your_calm() -> None:
    conn = server(control_frames_per_second=1000, max_frames_per_call=2000)
    flood = PingFrame(0, opaque_data=b"x" * 8).serialize() * 1001
    terminated = fatal(conn.receive_data(flood, 1.0), "control_frames")
    assert terminated.error_code == H2_ENHANCE_YOUR_CALM
    frames = decode(conn.data_to_send())
    assert sum(isinstance(f, PingFrame) for f in frames) == 1000  # ACKs stop at the budget
    assert [f.error_code for f in frames if isinstance(f, GoAwayFrame)] == [H2_ENHANCE_YOUR_CALM]


def test_pings_at_the_budget_rate_are_answered() -> None:
    conn = server(control_frames_per_second=100)
    ping = PingFrame(0, opaque_data=b"x" * 8).serialize()
    for second in range(1, 6):  # (the preface's SETTINGS spent one token at 0.0)
        assert conn.receive_data(ping * 100, float(second)) == []
    assert not conn.closed


def test_a_settings_flood_is_rate_limited() -> None:
    conn = server(settings_per_second=10)
    empty = SettingsFrame(0).serialize()
    for _ in range(9):  # one SETTINGS was spent by the preface
        assert conn.receive_data(empty, 0.0) == []
    assert fatal(conn.receive_data(empty, 0.0), "settings_rate").error_code == (
        H2_ENHANCE_YOUR_CALM
    )


def test_only_a_growing_initial_window_wakes_writers() -> None:
    conn = server()
    same = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535})
    smaller = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000})
    larger = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 100_000})
    other = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 10})
    assert conn.receive_data(same.serialize(), 1.0) == []
    assert conn.receive_data(smaller.serialize(), 1.0) == []
    assert conn.receive_data(other.serialize(), 1.0) == []
    assert conn.receive_data(larger.serialize(), 1.0) == [WindowOpened(None, all_streams=True)]


# ------------------------------------------------------------------ linear in bytes received


@pytest.mark.parametrize("interleaved", [True, False])
def test_window_updates_give_one_event_per_stream_per_batch(interleaved: bool) -> None:
    # 1-byte DATA frames and WINDOW_UPDATEs (stream and connection). Updates after many DATA
    # events were the quadratic case: each one scanned the events before it (13.5 s of CPU for
    # 3 x 120 KB before, 0.36 s after, measured with a script beside this test's frames).
    conn = server(max_frames_per_call=50_000)
    conn.receive_data(connect(1), 1.0)
    conn.respond(1, 200)
    conn.data_to_send()
    data = [DataFrame(1, b"x").serialize() for _ in range(20_000)]
    updates = [WindowUpdateFrame(i % 2, window_increment=1).serialize() for i in range(20_000)]
    if interleaved:
        parts = [frame for pair in zip(data, updates, strict=True) for frame in pair]
    else:
        parts = data + updates
    events = conn.receive_data(b"".join(parts), 1.0)
    opened = [e for e in events if isinstance(e, WindowOpened)]
    assert sorted(opened, key=lambda e: e.stream_id or 0) == [WindowOpened(None), WindowOpened(1)]
    assert sum(1 for e in events if not isinstance(e, WindowOpened)) == 20_000  # DataReceived


def test_one_call_handles_at_most_max_frames_per_call_and_says_more_is_pending() -> None:
    conn = server(max_frames_per_call=256)
    conn.receive_data(connect(1), 1.0)
    conn.respond(1, 200)
    conn.data_to_send()
    batch = b"".join(DataFrame(1, b"x").serialize() for _ in range(600))
    sizes = []
    events = conn.receive_data(batch, 1.0)
    while True:
        sizes.append(len(events))
        if not conn.input_pending:
            break
        events = conn.receive_data(b"", 1.0)
    assert sizes == [256, 256, 88]  # every frame handled, in calls of bounded work
    assert not conn.closed


# ------------------------------------------------------------------ preface deadline


def test_a_peer_without_preface_is_dropped_at_the_deadline() -> None:
    conn = HboneConnection(
        "server", now=100.0, settings=HboneSettings(preface_timeout=3.0, idle_timeout=None)
    )
    conn.data_to_send()
    assert conn.receive_data(PREFACE[:10], 101.0) == []  # a trickle is not a preface
    assert conn.next_deadline() == 103.0
    assert conn.on_timer(102.9) == []
    terminated = fatal(conn.on_timer(103.0), "preface_timeout")
    assert (terminated.reason, terminated.error_code) == ("preface_timeout", H2_PROTOCOL_ERROR)
    assert conn.limit_hits == {"preface_timeout": 1}


def test_the_peer_settings_clear_the_preface_deadline() -> None:
    settings = HboneSettings(preface_timeout=3.0, ping_interval=None, idle_timeout=None)
    conn = HboneConnection("server", now=0.0, settings=settings)
    assert conn.next_deadline() == 3.0
    conn.receive_data(PREFACE + SettingsFrame(0).serialize(), 1.0)
    assert conn.next_deadline() is None
    assert conn.on_timer(10.0) == []


# ------------------------------------------------------------------ the budget itself


def test_rate_budget_is_a_token_bucket() -> None:
    budget = RateBudget.per_second(2, now=0.0)
    assert [budget.take(0.0) for _ in range(3)] == [True, True, False]
    assert budget.take(0.5)  # half a second: one token back
    assert not budget.take(0.5)
    assert not budget.take(0.2)  # a clock going backwards refills nothing
    assert [budget.take(100.0) for _ in range(3)] == [True, True, False]  # never beyond burst
