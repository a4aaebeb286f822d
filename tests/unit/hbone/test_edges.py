"""Edge cases: window accounting on every close path, padding, trailers, settings changes, client
drain, the bounded memory of finished streams."""

from __future__ import annotations

import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.unit.hbone.frames import of_type
from tests.unit.hbone.pair import Pair, request
from zt.hbone import HboneSettings, StreamState
from zt.hbone.errors import (
    H2_CANCEL,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    ConnectionNotUsable,
    HboneUsageError,
)
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectResponded,
    DataReceived,
    GoAwayReceived,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from zt.hbone.settings import MiB

NO_TIMERS = HboneSettings(idle_timeout=None, ping_interval=None)


def fill_connection_window(pair: Pair) -> list[int]:
    """Five tunnels; the first four each carry a full 4 MiB stream window = the 16 MiB connection
    window, delivered to the server and not acknowledged."""
    streams = [pair.tunnel(port) for port in range(3000, 3005)]
    for sid in streams[:4]:
        assert pair.client.send_data(sid, bytes(4 * MiB)) == 4 * MiB
    pair.pump()
    pair.take_server()
    assert pair.client.send_window(streams[4]) == 0
    return streams


def test_peer_reset_returns_unacknowledged_bytes() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    streams = fill_connection_window(pair)
    pair.client.reset_stream(streams[0], H2_CANCEL)
    pair.pump()
    assert StreamReset(streams[0], H2_CANCEL, after_end_stream=False) in pair.take_server()
    assert pair.client.send_window(streams[4]) == 4 * MiB


def test_data_in_flight_to_a_reset_stream_is_returned_by_h2() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    streams = [pair.tunnel(port) for port in range(3100, 3105)]
    for sid in streams[:4]:
        pair.client.send_data(sid, bytes(4 * MiB))
    # The server resets all four before their bytes arrive.
    for sid in streams[:4]:
        pair.server.reset_stream(sid)
    pair.pump()
    assert not [e for e in pair.take_server() if isinstance(e, DataReceived)]
    assert pair.client.send_window(streams[4]) == 4 * MiB


def test_closed_stream_keeps_counting_until_acknowledged() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    streams = fill_connection_window(pair)
    first = streams[0]
    pair.client.end_stream(first)
    pair.server.end_stream(first)
    pair.pump()
    assert pair.server.stream_state(first) is StreamState.CLOSED
    assert pair.server.open_streams == 4
    # The adapter is still writing the 4 MiB to the upstream socket: window stays shut...
    assert pair.client.send_window(streams[4]) == 0
    # ...until it acknowledges, even though the stream is closed on the wire.
    pair.server.acknowledge(first, 4 * MiB)
    pair.pump()
    assert pair.client.send_window(streams[4]) == 4 * MiB


def test_padding_counts_for_flow_control() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    frame = DataFrame(sid, b"abc")
    frame.flags.add("PADDED")
    frame.pad_length = 100
    events = pair.client.receive_data(frame.serialize(), 0.0)
    assert events == [DataReceived(sid, b"abc", 104)]
    # Padding only: no bytes for the socket, window handed back at once.
    empty = DataFrame(sid, b"")
    empty.flags.add("PADDED")
    empty.pad_length = 50
    assert pair.client.receive_data(empty.serialize(), 0.0) == []


def test_trailers_end_the_stream() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    pair.server.send_data(sid, b"x")
    pair.pump()
    pair.take_client()
    trailers = HeadersFrame(sid, hpack.Encoder().encode([(b"grpc-status", b"0")]))
    trailers.flags.add("END_HEADERS")
    trailers.flags.add("END_STREAM")
    assert pair.client.receive_data(trailers.serialize(), 0.0) == [StreamEnded(sid)]


def test_peer_growing_initial_window_wakes_senders() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    pair.client.send_data(sid, bytes(4 * MiB))
    assert pair.client.send_window(sid) == 0
    grow = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 5 * MiB})
    events = pair.client.receive_data(grow.serialize(), 0.0)
    assert events == [WindowOpened(None, all_streams=True)]
    assert pair.client.send_window(sid) == 1 * MiB


def test_peer_lowering_max_streams_limits_the_client() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    pair.tunnel()
    pair.tunnel()
    lower = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 2})
    pair.client.receive_data(lower.serialize(), 0.0)
    assert pair.client.max_streams == 2
    assert not pair.client.can_open_stream()


def test_window_update_on_connection_reports_none() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    update = WindowUpdateFrame(0)
    update.window_increment = 1000
    assert pair.client.receive_data(update.serialize(), 0.0) == [WindowOpened(None)]


def test_client_drain_lets_the_server_finish() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    pair.client.start_drain(0.0, deadline=10.0)
    assert not pair.client.can_open_stream()
    pair.pump()
    # A client's GOAWAY names the last *server-initiated* stream: none.
    assert pair.take_server() == [GoAwayReceived(0, H2_NO_ERROR)]
    pair.server.send_data(sid, b"bye", end_stream=True)
    pair.client.end_stream(sid)
    pair.pump()
    # The last stream closed: the drained connection ends (unacknowledged bytes no longer matter
    # to the peer; the adapter still writes them to its local socket).
    assert pair.take_client() == [
        DataReceived(sid, b"bye", 3),
        StreamEnded(sid),
        ConnectionTerminated("drained"),
    ]
    assert pair.take_server() == [StreamEnded(sid), ConnectionTerminated("peer_goaway")]


def test_drain_end_from_a_local_call_is_reported_by_on_timer() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    pair.client.end_stream(sid)
    pair.pump()
    pair.server.start_drain(1.0, deadline=10.0)
    assert pair.server.next_deadline() == 10.0
    pair.server.end_stream(sid)  # a local call closes the last stream: nothing to return it with
    assert pair.server.closed
    assert pair.server.next_deadline() == 1.0  # "now": fire at once
    assert pair.server.on_timer(1.5) == [ConnectionTerminated("drained")]
    assert pair.server.next_deadline() is None


def test_goaway_without_streams_terminates_at_once() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    pair.server.start_drain(0.0, deadline=10.0)
    pair.pump()
    assert pair.take_client() == [
        GoAwayReceived(0, H2_NO_ERROR),
        ConnectionTerminated("peer_goaway"),
    ]


def test_finished_streams_are_remembered_then_reported_closed() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    first = pair.client.open_stream(request())
    pair.client.reset_stream(first)
    assert pair.client.stream_state(first) is StreamState.RESET
    for _ in range(1100):
        pair.client.reset_stream(pair.client.open_stream(request()))
    # Forgotten after 1024 finished streams, but known to have existed.
    assert pair.client.stream_state(first) is StreamState.CLOSED
    assert pair.client.open_streams == 0


def test_many_tunnels_in_sequence_on_one_connection() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    for round_ in range(300):
        sid = pair.tunnel(1000 + round_)
        pair.client.send_data(sid, b"q", end_stream=True)
        pair.server.send_data(sid, b"a", end_stream=True)
        pair.pump()
        pair.server.acknowledge(sid, 1)
        pair.client.acknowledge(sid, 1)
        pair.take_client()
        pair.take_server()
    assert pair.client.open_streams == 0
    assert pair.server.open_streams == 0
    assert not pair.client.closed
    frames = of_type(pair.wire_to_server, DataFrame)
    assert len(frames) == 300


def test_non_200_with_a_body_is_cancelled_and_the_body_dropped() -> None:
    # Envoy answers a failed CONNECT with a 503 whose body explains; the client wants neither.
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.client.open_stream(request())
    pair.client.data_to_send()
    encoder = hpack.Encoder()
    headers = HeadersFrame(sid, encoder.encode([(b":status", b"503")]))
    headers.flags.add("END_HEADERS")
    body = DataFrame(sid, b"upstream connect error")
    body.flags.add("END_STREAM")
    events = pair.client.receive_data(headers.serialize() + body.serialize(), 0.0)
    assert events == [ConnectResponded(sid, 503, "Service Unavailable")]
    responded = events[0]
    assert isinstance(responded, ConnectResponded)
    assert not responded.ok
    assert pair.client.stream_state(sid) is StreamState.RESET
    assert pair.client.send_window(sid) == 0
    resets = of_type([pair.client.data_to_send()], RstStreamFrame)
    assert [(f.stream_id, f.error_code) for f in resets] == [(sid, H2_CANCEL)]
    assert pair.client.open_streams == 0


def test_negative_acknowledge_is_refused() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    sid = pair.tunnel()
    with pytest.raises(HboneUsageError) as info:
        pair.client.acknowledge(sid, -1)
    assert "-1" in str(info.value)


def test_transport_closed_twice_reports_once() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    first = pair.server.transport_closed(1.0)
    assert first == [ConnectionTerminated("transport_closed", H2_INTERNAL_ERROR)]
    assert pair.server.transport_closed(2.0) == []
    with pytest.raises(ConnectionNotUsable):
        pair.server.send_data(1, b"x")


def test_refusing_a_tunnel_returns_its_early_data_window() -> None:
    pair = Pair(client_settings=NO_TIMERS, server_settings=NO_TIMERS)
    streams = [pair.tunnel(port) for port in range(4000, 4004)]
    for sid in streams[:3]:
        pair.client.send_data(sid, bytes(4 * MiB))
    late = pair.client.open_stream(request())
    pair.client.send_data(late, bytes(4 * MiB), end_stream=True)  # optimistic data, then FIN
    pair.pump()
    pair.take_server()
    assert pair.client.send_window(streams[3]) == 0  # 16 MiB in flight, none acknowledged
    pair.server.respond(late, 401, "policy_denied")  # the adapter drops the 4 MiB it holds
    pair.pump()
    assert pair.client.send_window(streams[3]) == 4 * MiB
    assert pair.server.open_streams == 4
