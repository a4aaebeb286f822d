"""The inbound DATA fast path (zt/hbone/_inbound.py): payloads without hyperframe objects or
copies, and h2's behaviour — events, errors, RST_STREAMs, WINDOW_UPDATEs, GOAWAYs — unchanged.

Every case runs through `Twins`: a fast-path core and a plain-h2 core fed the same bytes, whose
events and emitted bytes must be equal after each step."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.unit.hbone.frames import PREFACE, decode, of_type
from tests.unit.hbone.pair import request
from tests.unit.hbone.twins import Twins
from zt.hbone import HboneConnection, HboneSettings
from zt.hbone._inbound import PIN_RATIO
from zt.hbone.errors import (
    H2_FLOW_CONTROL_ERROR,
    H2_FRAME_SIZE_ERROR,
    H2_PROTOCOL_ERROR,
    H2_STREAM_CLOSED,
)
from zt.hbone.events import ConnectionTerminated, ConnectRequested, DataReceived, StreamEnded
from zt.hbone.settings import KiB, MiB
from zt.hbone.streams import StreamRecord, StreamState, StreamTable

CONNECT = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
SMALL = HboneSettings(
    stream_window=65_535, connection_window=100_000, max_frame_size=16 * KiB, ping_interval=None
)


def raw(kind: int, flags: int, stream_id: int, body: bytes) -> bytes:
    """A frame as RFC 9113 §4.1 lays it out, whatever hyperframe would allow."""
    size = len(body)
    return struct.pack(">HBBBL", size >> 8, size & 0xFF, kind, flags, stream_id) + body


def data(stream_id: int, body: bytes, end: bool = False) -> bytes:
    return raw(0x0, 0x1 if end else 0x0, stream_id, body)


def headers(stream_id: int, end_headers: bool = True) -> bytes:
    frame = HeadersFrame(stream_id, hpack.Encoder().encode(CONNECT))
    if end_headers:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def server(settings: HboneSettings | None = None, streams: tuple[int, ...] = (1,)) -> Twins:
    """A server twin that accepted (200) a CONNECT on each of `streams`."""
    twins = Twins("server", settings)
    encoder = hpack.Encoder()
    opening = b"".join(
        HeadersFrame(sid, encoder.encode(CONNECT), flags=["END_HEADERS"]).serialize()
        for sid in streams
    )
    events = twins.feed(PREFACE + SettingsFrame(0).serialize() + opening)
    assert [e.stream_id for e in events if isinstance(e, ConnectRequested)] == list(streams)
    for sid in streams:
        twins.act(functools.partial(HboneConnection.respond, stream_id=sid, status=200))
    twins.same_output()
    return twins


def received(events: Sequence[object]) -> list[DataReceived]:
    return [e for e in events if isinstance(e, DataReceived)]


def terminated(events: Sequence[object]) -> ConnectionTerminated:
    (end,) = [e for e in events if isinstance(e, ConnectionTerminated)]
    return end


def goaway_code(wire: bytes) -> int:
    (frame,) = of_type([wire], GoAwayFrame)
    return int(frame.error_code)


# ------------------------------------------------------------------ payloads and copies


def test_a_frame_filling_its_chunk_is_passed_by_reference() -> None:
    twins = server()
    wire = data(1, bytes(range(256)) * 4096)  # 1 MiB payload, one receive_data call
    (event,) = received(twins.feed(wire))
    assert isinstance(event.data, memoryview) and event.data.obj is wire
    assert event.data == wire[9:] and event.flow_controlled_length == MiB


def test_small_frames_in_a_large_chunk_are_copied_not_pinned() -> None:
    twins = server()
    frames = [data(1, bytes([i]) * 1000) for i in range(PIN_RATIO + 4)]
    events = received(twins.feed(b"".join(frames)))
    assert [bytes(e.data) for e in events] == [bytes([i]) * 1000 for i in range(len(frames))]
    # Each payload is < 1/PIN_RATIO of the chunk: its own bytes, not a view pinning the chunk.
    assert all(type(e.data) is bytes for e in events)


def test_a_frame_spanning_chunks_is_joined_once_and_split_anywhere() -> None:
    twins = server()
    payload = bytes(range(251)) * 300
    wire = data(1, payload, end=True) + data(1, b"")  # the second: DATA after END_STREAM
    got = []
    for i in range(0, len(wire), 1000):  # header and payload cut at arbitrary points
        got += twins.feed(wire[i : i + 1000])
    assert b"".join(bytes(e.data) for e in received(got)) == payload
    assert StreamEnded(1) in got
    # h2's answer to DATA on a half-closed (remote) stream: RST_STREAM(STREAM_CLOSED).
    (rst,) = of_type([twins.same_output()], RstStreamFrame)
    assert (rst.stream_id, rst.error_code) == (1, H2_STREAM_CLOSED)


def test_one_byte_at_a_time() -> None:
    twins = server(streams=(1, 3))
    wire = data(1, b"abc") + data(3, b"defg", end=True) + data(1, b"", end=True)
    events = [e for i in range(len(wire)) for e in twins.feed(wire[i : i + 1])]
    assert [(e.stream_id, bytes(e.data)) for e in received(events)] == [(1, b"abc"), (3, b"defg")]
    assert StreamEnded(3) in events and StreamEnded(1) in events


def test_a_reused_receive_buffer_does_not_change_delivered_data() -> None:
    twins = server()
    buf = bytearray(data(1, b"x" * 5000))
    (event,) = received(twins.feed(memoryview(buf)))  # type: ignore[arg-type]
    buf[:] = b"\0" * len(buf)  # e.g. a recv_into buffer refilled by the adapter
    assert bytes(event.data) == b"x" * 5000


def test_reserved_bit_of_the_stream_id_is_ignored() -> None:
    # RFC 9113 §4.1: "The semantics of this bit are undefined, and the bit MUST remain unset
    # (0x00) when sending and MUST be ignored when receiving."
    twins = server()
    (event,) = received(twins.feed(data(1 | 0x80000000, b"hi")))
    assert (event.stream_id, bytes(event.data)) == (1, b"hi")


def test_undefined_flags_are_ignored() -> None:
    twins = server()
    (event,) = received(twins.feed(raw(0x0, 0xF6, 1, b"flags")))  # all but END_STREAM, PADDED
    assert bytes(event.data) == b"flags"


# ------------------------------------------------------------------ flow control


def test_window_updates_are_h2s() -> None:
    twins = server(SMALL)
    chunk = b"y" * 16 * KiB
    updates = []
    for _ in range(4):
        (event,) = received(twins.feed(data(1, chunk)))
        size = event.flow_controlled_length
        twins.act(functools.partial(HboneConnection.acknowledge, stream_id=1, n=size))
        frames = of_type([twins.same_output()], WindowUpdateFrame)
        updates.append(sorted((u.stream_id, u.window_increment) for u in frames))
    # h2 returns window once half of it was acknowledged: the stream's (65,535) every 32 KiB,
    # the connection's (100,000) after 64 KiB.
    assert updates == [[], [(1, 32_768)], [], [(0, 65_536), (1, 32_768)]]


def test_data_beyond_the_stream_window_is_a_flow_control_error() -> None:
    twins = server(SMALL)
    frames = [data(1, b"z" * 16 * KiB) for _ in range(4)] + [data(1, b"z" * 200)]
    events = twins.feed(b"".join(frames))  # 65,736 bytes: over the 65,535 stream window
    assert received(events) == []  # h2 raised: the batch's DATA events are not delivered
    end = terminated(events)
    assert end.error_code == H2_FLOW_CONTROL_ERROR
    assert goaway_code(twins.same_output()) == H2_FLOW_CONTROL_ERROR


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    twins = server(SMALL, streams=(1, 3))
    for sid in (1, 3):
        twins.feed(b"".join(data(sid, b"w" * 16 * KiB) for _ in range(3)))  # 98,304 bytes
    events = twins.feed(data(1, b"w" * 2000))  # 100,304 > the 100,000 connection window
    assert terminated(events).error_code == H2_FLOW_CONTROL_ERROR


def test_padded_data_is_parsed_by_h2_and_counts_its_padding() -> None:
    twins = server()
    frame = DataFrame(1, b"payload", pad_length=10, flags=["PADDED"])
    (event,) = received(twins.feed(frame.serialize()))
    assert bytes(event.data) == b"payload"
    assert event.flow_controlled_length == 1 + 7 + 10  # RFC 9113 §6.1: padding is flow-controlled


def test_padding_longer_than_the_frame_is_a_protocol_error() -> None:
    twins = server()
    events = twins.feed(raw(0x0, 0x8, 1, b"\x05abc"))  # Pad Length 5 > 3 remaining bytes
    assert terminated(events).error_code == H2_PROTOCOL_ERROR


# ------------------------------------------------------------------ errors h2 must still produce


def test_data_on_stream_zero_fails_as_soon_as_its_header_arrives() -> None:
    # RFC 9113 §6.1: "If a DATA frame is received whose Stream Identifier field is 0x00, the
    # recipient MUST respond with a connection error (Section 5.4.1) of type PROTOCOL_ERROR."
    twins = server()
    events = twins.feed(data(0, b"q" * 100)[:9])
    assert terminated(events).error_code == H2_PROTOCOL_ERROR


def test_data_on_an_idle_stream_is_a_connection_error() -> None:
    twins = server()
    events = twins.feed(data(5, b"never opened"))
    assert terminated(events).error_code == H2_PROTOCOL_ERROR


def test_data_on_a_reset_stream_gets_rst_and_returns_connection_window() -> None:
    twins = server(SMALL, streams=(1, 3))
    twins.feed(RstStreamFrame(1, error_code=0x8).serialize())
    twins.same_output()
    events = twins.feed(b"".join(data(1, b"late" * 4096) for _ in range(4)))
    assert received(events) == []
    out = twins.same_output()
    assert {(f.stream_id, f.error_code) for f in of_type([out], RstStreamFrame)} == {
        (1, H2_STREAM_CLOSED)
    }
    # Bytes nobody will read still count against the connection window, and h2 returns them.
    assert [(f.stream_id, f.window_increment) for f in of_type([out], WindowUpdateFrame)] == [
        (0, 65_536)
    ]


def test_oversized_frame_is_a_frame_size_error() -> None:
    twins = server(SMALL)
    events = twins.feed(data(1, b"o" * (16 * KiB + 1)))
    assert terminated(events).error_code == H2_FRAME_SIZE_ERROR


def test_data_inside_an_unfinished_header_block_is_a_protocol_error() -> None:
    twins = server()
    events = twins.feed(headers(3, end_headers=False) + data(1, b"between"))
    assert terminated(events).error_code == H2_PROTOCOL_ERROR


def test_header_block_then_data_in_one_chunk() -> None:
    twins = server()
    block = hpack.Encoder().encode(CONNECT)
    first = HeadersFrame(3, block[:3]).serialize()
    rest = ContinuationFrame(3, block[3:], flags=["END_HEADERS"]).serialize()
    events = twins.feed(first + rest + data(1, b"after") + data(3, b"early"))
    assert [type(e).__name__ for e in events] == [
        "ConnectRequested",
        "DataReceived",
        "DataReceived",
    ]


@pytest.mark.parametrize("cut", [1, 10, 23, 24, 30])
def test_client_preface_split_anywhere(cut: int) -> None:
    twins = Twins("server")
    wire = PREFACE + SettingsFrame(0).serialize() + headers(1) + data(1, b"body")
    events = twins.feed(wire[:cut]) + twins.feed(wire[cut:])
    assert [type(e).__name__ for e in events] == ["ConnectRequested", "DataReceived"]


def test_bad_preface_is_a_protocol_error() -> None:
    twins = Twins("server")
    events = twins.feed(b"GET / HTTP/1.1\r\n\r\n" + data(1, b"x"))
    assert terminated(events).error_code == H2_PROTOCOL_ERROR


def test_client_side_receives_response_and_data() -> None:
    twins = Twins("client")
    twins.act(lambda c: c.open_stream(request()))
    twins.same_output()
    response = HeadersFrame(1, hpack.Encoder().encode([(b":status", b"200")]))
    response.flags.add("END_HEADERS")
    wire = SettingsFrame(0).serialize() + response.serialize() + data(1, b"down", end=True)
    events = twins.feed(wire)
    assert [type(e).__name__ for e in events] == [
        "ConnectResponded",
        "DataReceived",
        "StreamEnded",
    ]
    # END_STREAM reached h2's state machine: the stream is half-closed (remote) there too.
    assert twins.fast._h2.streams[1].state_machine.state.name == "HALF_CLOSED_REMOTE"


def test_decoding_helper_sees_what_the_fast_path_emits() -> None:
    twins = server()
    twins.feed(data(1, b"ping"))
    twins.act(lambda c: c.send_data(1, b"pong", end_stream=True))
    (frame,) = of_type([twins.same_output()], DataFrame)
    assert frame.data == b"pong" and decode(b"")[:] == []


# ------------------------------------------------------------------ per-call bookkeeping


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("reset", [None, 0x8])
def test_finished_is_closed_or_reset(local: bool, remote: bool, reset: int | None) -> None:
    # `finished` is computed without building `state` (it runs per live stream per call).
    record = StreamRecord(1, local_ended=local, remote_ended=remote, reset_code=reset)
    assert record.finished == (record.state in (StreamState.CLOSED, StreamState.RESET))
    table = StreamTable()
    table._live[1] = record
    assert table.any_active() == (table.active() > 0) == (not record.finished)
