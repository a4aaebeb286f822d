"""Flow control (acknowledge only after the local write) and frame sizes (16 KiB peers, 1 MiB)."""

from __future__ import annotations

from hyperframe.frame import DataFrame, WindowUpdateFrame

from tests.unit.hbone.frames import of_type
from tests.unit.hbone.pair import Pair
from zt.hbone import HboneSettings
from zt.hbone.events import DataReceived, Event, WindowOpened
from zt.hbone.settings import KiB, MiB


def received(events: list[Event], stream_id: int) -> int:
    return sum(
        e.flow_controlled_length
        for e in events
        if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def test_stream_window_exhausts_at_4_mib_until_acknowledged() -> None:
    pair = Pair()
    sid = pair.tunnel()
    assert pair.client.send_window(sid) == 4 * MiB
    blob = bytes(5 * MiB)
    accepted = pair.client.send_data(sid, blob)
    assert accepted == 4 * MiB  # the caller keeps the rest
    assert pair.client.send_window(sid) == 0
    assert pair.client.send_data(sid, blob[accepted:]) == 0
    pair.pump()
    assert received(pair.take_server(), sid) == 4 * MiB
    # Delivered but not acknowledged: no WINDOW_UPDATE, however long we pump.
    pair.pump()
    assert pair.take_client() == []
    assert pair.client.send_window(sid) == 0
    # The adapter wrote 1 MiB to the local socket.
    pair.server.acknowledge(sid, 1 * MiB)
    pair.pump()
    assert WindowOpened(sid) in pair.take_client()
    assert pair.client.send_window(sid) == 1 * MiB


def test_connection_window_is_16_mib_across_streams() -> None:
    pair = Pair()
    streams = [pair.tunnel(port) for port in range(1000, 1005)]
    for sid in streams[:4]:
        assert pair.client.send_data(sid, bytes(4 * MiB)) == 4 * MiB
    # Four full stream windows used the whole 16 MiB connection window.
    assert pair.client.send_window(streams[4]) == 0
    pair.pump()
    # Acknowledging on one stream frees connection window for every stream.
    pair.server.acknowledge(streams[0], 4 * MiB)
    pair.pump()
    assert pair.client.send_window(streams[4]) == 4 * MiB


def test_reset_returns_unacknowledged_bytes_to_the_connection_window() -> None:
    pair = Pair()
    streams = [pair.tunnel(port) for port in range(2000, 2005)]
    for sid in streams[:4]:
        pair.client.send_data(sid, bytes(4 * MiB))
    pair.pump()
    pair.take_server()
    # The server's adapter drops stream 0's 4 MiB (upstream reset): it will never acknowledge them.
    pair.server.reset_stream(streams[0])
    pair.server.acknowledge(streams[0], 4 * MiB)  # ignored: the core already returned them
    pair.pump()
    assert pair.client.send_window(streams[4]) == 4 * MiB
    connection_updates = [
        f.window_increment
        for f in of_type(pair.wire_to_client, WindowUpdateFrame)
        if not f.stream_id
    ]
    assert connection_updates[-1] == 4 * MiB  # exactly the dropped bytes, once


def test_acknowledge_more_than_delivered_is_clamped() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.client.send_data(sid, bytes(4 * MiB))
    pair.pump()
    pair.server.acknowledge(sid, 10 * MiB)
    pair.pump()
    assert pair.client.send_window(sid) == 4 * MiB
    pair.server.acknowledge(sid, 1)  # nothing owed any more: no frame
    assert pair.server.data_to_send() == b""


def test_peer_allowing_16_kib_frames_gets_16_kib_frames() -> None:
    # Envoy's default SETTINGS_MAX_FRAME_SIZE is the RFC minimum, 16 KiB.
    pair = Pair(server_settings=HboneSettings(max_frame_size=16 * KiB))
    sid = pair.tunnel()
    assert pair.client.max_outbound_frame_size == 16 * KiB
    payload = bytes(range(256)) * 400  # 100 KiB
    assert pair.client.send_data(sid, payload, end_stream=True) == len(payload)
    pair.pump()
    sizes = [len(f.data) for f in of_type(pair.wire_to_server, DataFrame)]
    assert sizes == [16 * KiB] * 6 + [len(payload) - 6 * 16 * KiB]
    got = b"".join(bytes(e.data) for e in pair.take_server() if isinstance(e, DataReceived))
    assert got == payload


def test_one_mib_frames_when_the_peer_allows_them() -> None:
    pair = Pair()
    sid = pair.tunnel()
    assert pair.server.max_outbound_frame_size == 1 * MiB
    pair.server.send_data(sid, bytes(3 * MiB + 5))
    pair.pump()
    sizes = [len(f.data) for f in of_type(pair.wire_to_client, DataFrame)]
    assert sizes == [MiB, MiB, MiB, 5]
    assert received(pair.take_client(), sid) == 3 * MiB + 5


def test_end_stream_only_with_the_last_accepted_byte() -> None:
    pair = Pair()
    sid = pair.tunnel()
    blob = bytes(4 * MiB + 10)
    accepted = pair.client.send_data(sid, blob, end_stream=True)
    assert accepted == 4 * MiB
    pair.pump()
    assert not [f for f in of_type(pair.wire_to_server, DataFrame) if "END_STREAM" in f.flags]
    pair.server.acknowledge(sid, accepted)
    pair.pump()
    assert pair.client.send_data(sid, blob[accepted:], end_stream=True) == 10
    pair.pump()
    ends = [f for f in of_type(pair.wire_to_server, DataFrame) if "END_STREAM" in f.flags]
    assert [len(f.data) for f in ends] == [10]


def test_data_repr_is_constant_size() -> None:
    # docs/design.md §2: h2 repr()s every received frame; hyperframe hex-encoded whole DATA payloads.
    text = repr(DataFrame(1, bytes(MiB)))
    assert text.endswith("<1048576 bytes>")
    assert len(text) < 120
