"""Connection lifecycle on a fake clock: PING keepalive, idle close, GOAWAY drain, stream limits,
protocol errors."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, RstStreamFrame

from tests.unit.hbone.frames import decode, of_type
from tests.unit.hbone.pair import Pair, request
from zt.hbone import HboneConnection, HboneSettings, StreamState
from zt.hbone.errors import (
    H2_CONNECT_ERROR,
    H2_FRAME_SIZE_ERROR,
    H2_NO_ERROR,
    H2_PROTOCOL_ERROR,
    H2_REFUSED_STREAM,
    ConnectionFull,
    ConnectionNotUsable,
    PeerProtocolError,
)
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    DataReceived,
    GoAwayReceived,
    StreamEnded,
    StreamReset,
)
from zt.hbone.settings import KiB

NO_IDLE = HboneSettings(idle_timeout=None)


def test_ping_every_10s_and_answered() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=HboneSettings(ping_interval=None))
    assert pair.client.next_deadline() == 10.0
    assert pair.client.on_timer(9.9) == []
    assert pair.client.data_to_send() == b""
    pair.now = 10.0
    assert pair.client.on_timer(10.0) == []
    pair.pump()
    pings = of_type(pair.wire_to_server, PingFrame)
    acks = of_type(pair.wire_to_client, PingFrame)
    assert [("ACK" in f.flags) for f in pings] == [False]
    assert [("ACK" in f.flags) for f in acks] == [True]
    assert acks[0].opaque_data == pings[0].opaque_data
    # Answered: the next PING is due 10 s after the previous one was sent.
    assert pair.client.next_deadline() == 20.0
    pair.now = 20.0
    pair.client.on_timer(20.0)
    pair.pump()
    assert len(of_type(pair.wire_to_server, PingFrame)) == 2
    assert not pair.client.closed


def test_unanswered_ping_drops_the_connection_after_20s() -> None:
    pair = Pair(client_settings=NO_IDLE)
    sid = pair.tunnel()
    pair.client.on_timer(10.0)
    pair.client.data_to_send()  # the PING is lost: never reaches the server
    assert pair.client.next_deadline() == 30.0
    assert pair.client.on_timer(29.99) == []
    events = pair.client.on_timer(30.0)
    assert events == [
        StreamReset(sid, H2_CONNECT_ERROR, after_end_stream=False, remote=False),
        ConnectionTerminated("ping_timeout", H2_NO_ERROR),
    ]
    assert of_type([pair.client.data_to_send()], GoAwayFrame)
    assert pair.client.closed
    assert pair.client.on_timer(40.0) == []


def test_idle_connection_closes_after_5_minutes_without_streams() -> None:
    settings = HboneSettings(ping_interval=None)
    pair = Pair(client_settings=settings, server_settings=settings)
    assert pair.client.next_deadline() == 300.0
    pair.now = 50.0
    sid = pair.tunnel()
    assert pair.client.next_deadline() is None  # a live stream: not idle
    pair.now = 100.0
    pair.client.send_data(sid, b"", end_stream=True)
    pair.server.end_stream(sid)
    pair.pump()
    assert pair.client.open_streams == 0
    assert pair.client.next_deadline() == 400.0
    assert pair.client.on_timer(399.0) == []
    assert pair.client.on_timer(400.0) == [ConnectionTerminated("idle_timeout", H2_NO_ERROR)]
    goaways = of_type([pair.client.data_to_send()], GoAwayFrame)
    assert [g.error_code for g in goaways] == [H2_NO_ERROR]


def test_an_idle_server_connection_never_times_out() -> None:
    """The server side has no idle timer whatever its settings say: only the client ends an
    idle connection (ztunnel's HBONE server has none either)."""
    settings = HboneSettings(ping_interval=None, idle_timeout=1.0)
    pair = Pair(client_settings=NO_IDLE, server_settings=settings)
    assert pair.server.next_deadline() is None
    sid = pair.tunnel()
    pair.client.send_data(sid, b"", end_stream=True)
    pair.server.end_stream(sid)
    pair.pump()
    assert pair.server.open_streams == 0
    assert pair.server.next_deadline() is None
    assert pair.server.on_timer(10_000.0) == [] and not pair.server.closed


def test_server_drain_lets_open_streams_finish() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    sid = pair.tunnel()
    pair.server.start_drain(1.0, deadline=31.0)
    pair.pump()
    assert pair.take_client() == [GoAwayReceived(sid, H2_NO_ERROR)]
    assert not pair.client.can_open_stream()
    with pytest.raises(ConnectionNotUsable):
        pair.client.open_stream(request())
    # The surviving stream still carries data both ways (h2 alone would refuse after GOAWAY).
    pair.client.send_data(sid, b"more")
    pair.server.send_data(sid, b"reply")
    pair.pump()
    assert pair.take_server() == [DataReceived(sid, b"more", 4)]
    assert pair.take_client() == [DataReceived(sid, b"reply", 5)]
    pair.client.send_data(sid, b"", end_stream=True)
    pair.server.send_data(sid, b"", end_stream=True)
    pair.pump()
    assert pair.take_server() == [StreamEnded(sid), ConnectionTerminated("drained")]
    assert pair.take_client() == [StreamEnded(sid), ConnectionTerminated("peer_goaway")]


def test_drain_deadline_resets_what_is_left() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    sid = pair.tunnel()
    pair.server.start_drain(0.0, deadline=5.0)
    assert pair.server.next_deadline() == 5.0
    assert pair.server.on_timer(4.0) == []
    assert pair.server.on_timer(5.0) == [
        StreamReset(sid, H2_CONNECT_ERROR, after_end_stream=False, remote=False),
        ConnectionTerminated("drain_deadline"),
    ]


def test_drain_without_streams_terminates_at_once() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    pair.server.start_drain(2.0, deadline=60.0)
    assert pair.server.closed
    assert pair.server.next_deadline() == 2.0
    assert pair.server.on_timer(2.0) == [ConnectionTerminated("drained")]
    goaways = of_type([pair.server.data_to_send()], GoAwayFrame)
    assert [(g.last_stream_id, g.error_code) for g in goaways] == [(0, H2_NO_ERROR)]


def test_stream_opened_across_goaway_is_refused_and_retryable() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    first = pair.tunnel()
    pair.server.start_drain(0.0, deadline=30.0)  # GOAWAY(last=1) not yet delivered
    second = pair.client.open_stream(request())
    pair.pump()
    assert pair.take_server() == []  # stream 3 never surfaced on the server
    events = pair.take_client()
    assert GoAwayReceived(first, H2_NO_ERROR) in events
    assert StreamReset(second, H2_REFUSED_STREAM, after_end_stream=False) in events
    assert pair.client.stream_state(first) is StreamState.OPEN


def test_goaway_with_error_kills_every_stream() -> None:
    pair = Pair(client_settings=NO_IDLE)
    sid = pair.tunnel()
    frame = GoAwayFrame(0)
    frame.last_stream_id = sid
    frame.error_code = 0xB  # ENHANCE_YOUR_CALM
    events = pair.client.receive_data(frame.serialize(), 1.0)
    assert events[:2] == [
        GoAwayReceived(sid, 0xB),
        StreamReset(sid, H2_CONNECT_ERROR, after_end_stream=False, remote=False),
    ]
    terminated = events[2]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.reason == "peer_goaway"
    assert isinstance(terminated.error, PeerProtocolError)


def test_client_opens_at_most_100_streams() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    for _ in range(100):
        pair.client.open_stream(request())
    assert not pair.client.can_open_stream()
    with pytest.raises(ConnectionFull) as info:
        pair.client.open_stream(request())
    assert info.value.http_status == 503
    pair.pump()
    assert sum(isinstance(e, ConnectRequested) for e in pair.take_server()) == 100
    # One stream finishes: room for one more.
    pair.client.reset_stream(1)
    assert pair.client.can_open_stream()


def test_server_advertises_200_and_client_respects_the_smaller_limit() -> None:
    # Unanswered CONNECTs are capped at 100 by default (max_pending_connects): lift it here.
    pair = Pair(
        client_settings=HboneSettings(client_max_streams=500, idle_timeout=None),
        server_settings=HboneSettings(max_pending_connects=200),
    )
    assert pair.client.max_streams == 200
    for _ in range(200):
        pair.client.open_stream(request())
    pair.pump()
    assert pair.server.open_streams == 200
    assert not pair.server.closed
    with pytest.raises(ConnectionFull):
        pair.client.open_stream(request())


def test_garbage_is_a_clean_protocol_error() -> None:
    pair = Pair(client_settings=NO_IDLE, server_settings=NO_IDLE)
    sid = pair.tunnel()
    events = pair.server.receive_data(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01" + b"x" * 8, 1.0)
    # A GOAWAY on a non-zero stream: RFC 9113 §6.8 "a PROTOCOL_ERROR".
    assert events[0] == StreamReset(sid, H2_CONNECT_ERROR, after_end_stream=False, remote=False)
    terminated = events[1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.reason == "protocol_error"
    assert isinstance(terminated.error, PeerProtocolError)
    goaways = [f for f in decode(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [g.error_code for g in goaways] == [H2_PROTOCOL_ERROR]
    assert pair.server.receive_data(b"more", 2.0) == []


def test_frame_larger_than_advertised_is_frame_size_error() -> None:
    pair = Pair(server_settings=HboneSettings(max_frame_size=16 * KiB))
    sid = pair.tunnel()
    frame = DataFrame(sid, bytes(16 * KiB + 1))
    events = pair.server.receive_data(frame.serialize(), 1.0)
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    assert terminated.error_code == H2_FRAME_SIZE_ERROR


def test_one_mib_frames_accepted_before_settings_ack() -> None:
    # docs/design.md §2: a side advertising MAX_FRAME_SIZE must raise max_inbound_frame_size at once (h2
    # waits for the SETTINGS ACK). The peer may send big frames as soon as it read our SETTINGS.
    client = HboneConnection("client", now=0.0)
    server = HboneConnection("server", now=0.0)
    sid = client.open_stream(request())
    wire = client.data_to_send() + DataFrame(sid, bytes(1024 * KiB)).serialize()
    events = server.receive_data(wire, 0.0)
    assert events[-1] == DataReceived(sid, bytes(1024 * KiB), 1024 * KiB)
    assert not server.closed


def test_server_refuses_the_201st_stream_without_killing_the_connection() -> None:
    # A raw h2 client that has not read our SETTINGS yet may open more than we advertise.
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    for index in range(201):
        raw.send_headers(2 * index + 1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    # (max_pending_connects lifted: this is about the stream limit, not unanswered CONNECTs)
    settings = HboneSettings(idle_timeout=None, max_pending_connects=200)
    server = HboneConnection("server", now=0.0, settings=settings)
    events = server.receive_data(raw.data_to_send(), 0.0)
    assert sum(isinstance(e, ConnectRequested) for e in events) == 200
    assert not server.closed
    refused = [f for f in decode(server.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in refused] == [(401, H2_REFUSED_STREAM)]
    assert server.open_streams == 200


def test_header_list_limit_is_enforced_as_advertised() -> None:
    server = HboneConnection("server", now=0.0, settings=HboneSettings(max_header_list_size=2048))
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    big = [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("baggage", "k=" + "v" * 4000)]
    raw.send_headers(1, big)
    events = server.receive_data(raw.data_to_send(), 0.0)
    terminated = events[-1]
    assert isinstance(terminated, ConnectionTerminated)
    # The encoded block is larger than 2048 bytes: refused on its frame header, before HPACK
    # decoding (zt/hbone/limits.py).
    assert terminated.reason == "limit_exceeded"
    assert "header" in str(terminated.error).lower()
