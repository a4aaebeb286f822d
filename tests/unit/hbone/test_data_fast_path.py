"""The outbound DATA fast path (zt/hbone/_h2.py): what goes on the wire is exactly what h2's own
serialiser would send, payloads ride by reference only when that is safe, and order is kept."""

from __future__ import annotations

from hyperframe.frame import DataFrame, WindowUpdateFrame

from tests.unit.hbone.frames import PREFACE, of_type
from tests.unit.hbone.pair import Pair
from zt.hbone import HboneConnection
from zt.hbone._h2 import COALESCE
from zt.hbone.events import DataReceived, Event, StreamEnded
from zt.hbone.settings import MiB


def _data(wire: bytes) -> list[DataFrame]:
    return of_type([wire], DataFrame)


def _received(events: list[Event]) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))


def test_large_payload_is_framed_and_passed_by_reference() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    payload = bytes(range(256)) * 4096  # 1 MiB: one frame at our 1 MiB MAX_FRAME_SIZE
    assert pair.client.send_data(stream_id, payload) == len(payload)
    chunks = pair.client.chunks_to_send()
    # Header + the first COALESCE bytes copied, the rest a view of the caller's bytes object.
    assert len(chunks) == 2
    assert len(chunks[0]) == 9 + COALESCE
    assert isinstance(chunks[1], memoryview) and chunks[1].obj is payload
    wire = b"".join(chunks)
    (frame,) = _data(wire)
    assert frame.stream_id == stream_id and frame.data == payload and not frame.flags
    events = pair.server.receive_data(wire, pair.now)
    assert _received(events) == payload


def test_small_frames_are_coalesced_into_one_chunk_in_order() -> None:
    pair = Pair()
    first, second = pair.tunnel(), pair.tunnel(8081)
    pair.client.send_data(first, b"one")
    pair.client.send_data(second, b"two")
    pair.client.end_stream(first)
    chunks = pair.client.chunks_to_send()
    assert len(chunks) == 1  # one TLS record's worth, not one write per frame
    frames = _data(bytes(chunks[0]))
    assert [(f.stream_id, f.data, sorted(f.flags)) for f in frames] == [
        (first, b"one", []),
        (second, b"two", []),
        (first, b"", ["END_STREAM"]),
    ]
    events = pair.server.receive_data(chunks[0], pair.now)
    assert StreamEnded(first) in events


def test_mutable_buffers_are_copied_before_the_caller_reuses_them() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    buf = bytearray(b"a" * (2 * COALESCE))
    pair.client.send_data(stream_id, memoryview(buf))
    buf[:] = b"b" * len(buf)  # e.g. a recv_into buffer refilled before the TLS write
    wire = b"".join(pair.client.chunks_to_send())
    (frame,) = _data(wire)
    assert frame.data == b"a" * (2 * COALESCE)


def test_frames_never_exceed_the_peers_max_frame_size() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    # docs/design.md §2: Send frames as large as the peer allows (the server allows 1 MiB).
    payload = b"x" * (MiB + 5)
    sent = pair.client.send_data(stream_id, payload)
    frames = _data(b"".join(pair.client.chunks_to_send()))
    assert [len(f.data) for f in frames] == [MiB, sent - MiB]


def test_data_to_send_joins_the_chunks_and_honours_amount() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    pair.client.send_data(stream_id, b"z" * (3 * COALESCE))
    h2 = pair.client._h2
    head = h2.data_to_send(10)
    rest = h2.data_to_send()
    (frame,) = _data(head + rest)
    assert len(head) == 10 and frame.data == b"z" * (3 * COALESCE)


def test_preamble_and_settings_precede_everything() -> None:
    # h2 writes its preface straight into its own buffer: it must still come first.
    client = HboneConnection("client", now=0.0)
    wire = b"".join(client.chunks_to_send())
    assert wire.startswith(PREFACE)
    (update,) = of_type([wire], WindowUpdateFrame)
    # docs/design.md §2: connection window 16 MiB
    assert update.window_increment == 16 * MiB - 65535
