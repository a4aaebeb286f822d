"""Client core ↔ server core, bytes pumped between them (no sockets): tunnels, closes, resets."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
from hyperframe.frame import RstStreamFrame, SettingsFrame, WindowUpdateFrame

from tests.unit.hbone.frames import of_type
from tests.unit.hbone.pair import Pair, request
from zt.hbone import ConnectRequest, HboneConnection, StreamState
from zt.hbone.errors import (
    H2_CANCEL,
    H2_CONNECT_ERROR,
    H2_INTERNAL_ERROR,
    H2_NO_ERROR,
    BadConnectRequest,
    HboneUsageError,
    PolicyDenied,
    StreamNotWritable,
    UnknownStream,
    UpstreamUnreachable,
)
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    ConnectResponded,
    DataReceived,
    RequestRejected,
    StreamEnded,
    StreamReset,
)
from zt.hbone.settings import MiB


def test_connect_200_then_data_both_ways() -> None:
    pair = Pair()
    stream_id = pair.client.open_stream(request(9090))
    pair.pump()
    assert pair.take_server() == [ConnectRequested(stream_id, request(9090))]
    pair.server.respond(stream_id, 200)
    pair.pump()
    assert pair.take_client() == [ConnectResponded(stream_id, 200, "")]
    assert pair.client.send_data(stream_id, b"ping") == 4
    assert pair.server.send_data(stream_id, memoryview(b"pong!")) == 5
    pair.pump()
    assert pair.take_server() == [DataReceived(stream_id, b"ping", 4)]
    assert pair.take_client() == [DataReceived(stream_id, b"pong!", 5)]
    assert pair.client.stream_state(stream_id) is StreamState.OPEN
    assert pair.server.stream_state(stream_id) is StreamState.OPEN


def test_client_half_close_then_server_half_close() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.client.send_data(sid, b"req", end_stream=True)
    pair.pump()
    assert pair.take_server() == [DataReceived(sid, b"req", 3), StreamEnded(sid)]
    assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    # The server may still send after the client's FIN (exact half-close).
    pair.server.send_data(sid, b"resp")
    pair.pump()
    assert pair.take_client() == [DataReceived(sid, b"resp", 4)]
    pair.server.end_stream(sid)
    pair.pump()
    assert pair.take_client() == [StreamEnded(sid)]
    # Closed on the client; the server's record stays until it acknowledged what it delivered.
    assert pair.client.stream_state(sid) is StreamState.CLOSED
    assert pair.server.stream_state(sid) is StreamState.CLOSED
    assert pair.client.open_streams == 0
    assert pair.server.open_streams == 0


def test_server_half_close_first_and_empty_end_stream() -> None:
    pair = Pair()
    sid = pair.tunnel()
    assert pair.server.send_data(sid, b"", end_stream=True) == 0
    pair.pump()
    assert pair.take_client() == [StreamEnded(sid)]
    assert pair.server.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(StreamNotWritable):
        pair.server.send_data(sid, b"late")
    pair.client.send_data(sid, b"last words", end_stream=True)
    pair.pump()
    assert pair.take_server() == [DataReceived(sid, b"last words", 10), StreamEnded(sid)]


def test_end_stream_is_idempotent() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.client.end_stream(sid)
    pair.client.end_stream(sid)
    pair.pump()
    assert pair.take_server() == [StreamEnded(sid)]
    with pytest.raises(UnknownStream):
        pair.client.end_stream(99)


@pytest.mark.parametrize(
    "error",
    [BadConnectRequest(":authority", "x", "ip:port"), PolicyDenied(), UpstreamUnreachable()],
)
def test_non_200_ends_the_stream_on_both_sides(error: Exception) -> None:
    assert isinstance(error, BadConnectRequest | PolicyDenied | UpstreamUnreachable)
    pair = Pair()
    sid = pair.client.open_stream(request())
    pair.pump()
    pair.take_server()
    pair.server.reject(sid, error)
    pair.pump()
    assert pair.take_client() == [ConnectResponded(sid, error.http_status, error.reason)]
    assert pair.take_server() == []
    assert pair.client.open_streams == 0
    assert pair.server.open_streams == 0
    assert pair.client.stream_state(sid) in (StreamState.CLOSED, StreamState.RESET)
    with pytest.raises(StreamNotWritable):
        pair.client.send_data(sid, b"x")
    assert [f.error_code for f in of_type(pair.wire_to_client, RstStreamFrame)] == [H2_NO_ERROR]


def test_malformed_request_costs_one_stream_not_the_connection() -> None:
    pair = Pair()
    good = pair.tunnel()
    # A raw h2 client sends what our client core never would: an authority with userinfo.
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    server = HboneConnection("server", now=0.0)
    server.receive_data(raw.data_to_send(), 0.0)
    raw.receive_data(server.data_to_send())
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "user@example.com:443")])
    events = server.receive_data(raw.data_to_send(), 0.0)
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, RequestRejected)
    assert rejected.status == 400
    assert isinstance(rejected.error, BadConnectRequest)
    assert rejected.error.field == ":authority"
    answer = raw.receive_data(server.data_to_send())
    statuses = [dict(e.headers)[b":status"] for e in answer if hasattr(e, "headers") and e.headers]
    assert statuses == [b"400"]
    assert not server.closed
    # The pair's own connection is untouched.
    assert pair.client.send_data(good, b"still fine") == 10


def test_client_reset_reaches_server() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.client.reset_stream(sid, H2_CANCEL)
    pair.pump()
    events = pair.take_server()
    assert events == [StreamReset(sid, H2_CANCEL, after_end_stream=False, remote=True)]
    reset = events[0]
    assert isinstance(reset, StreamReset)
    assert not reset.is_eof
    assert pair.client.stream_state(sid) is StreamState.RESET
    assert pair.server.stream_state(sid) is StreamState.RESET
    pair.client.reset_stream(sid)  # no-op on a finished stream
    assert pair.client.data_to_send() == b""


def test_server_reset_after_200_is_an_error_for_the_client() -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.server.reset_stream(sid, 0xA)  # CONNECT_ERROR: the upstream TCP connection was reset
    pair.pump()
    assert pair.take_client() == [StreamReset(sid, 0xA, after_end_stream=False)]


@pytest.mark.parametrize("code", [H2_NO_ERROR, H2_CANCEL])
def test_rst_after_end_stream_reads_as_eof(code: int) -> None:
    pair = Pair()
    sid = pair.tunnel()
    pair.server.send_data(sid, b"all of it", end_stream=True)
    pair.server.reset_stream(sid, code)
    pair.pump()
    events = pair.take_client()
    assert events[:2] == [DataReceived(sid, b"all of it", 9), StreamEnded(sid)]
    reset = events[2]
    assert isinstance(reset, StreamReset)
    assert reset.after_end_stream
    assert reset.is_eof


def test_stream_state_of_unknown_stream_raises() -> None:
    pair = Pair()
    with pytest.raises(UnknownStream) as info:
        pair.client.stream_state(7)
    assert "stream_id" in str(info.value)


def test_role_checks() -> None:
    pair = Pair()
    with pytest.raises(HboneUsageError):
        pair.server.open_stream(request())
    with pytest.raises(HboneUsageError):
        pair.client.respond(1, 200)
    with pytest.raises(HboneUsageError):
        HboneConnection("proxy", now=0.0)  # type: ignore[arg-type]


def test_server_cannot_send_before_responding() -> None:
    pair = Pair()
    sid = pair.client.open_stream(request())
    pair.client.send_data(sid, b"early")  # optimistic client data is allowed
    pair.pump()
    assert pair.take_server() == [ConnectRequested(sid, request()), DataReceived(sid, b"early", 5)]
    with pytest.raises(StreamNotWritable):
        pair.server.send_data(sid, b"x")
    with pytest.raises(StreamNotWritable):
        pair.server.end_stream(sid)
    with pytest.raises(HboneUsageError):
        pair.server.respond(sid, 99)
    pair.server.respond(sid, 200)
    with pytest.raises(StreamNotWritable):
        pair.server.respond(sid, 200)


def test_transport_closed_resets_every_stream() -> None:
    pair = Pair()
    first = pair.tunnel()
    second = pair.tunnel()
    pair.server.end_stream(second)
    pair.pump()
    pair.take_client()
    events = pair.client.transport_closed(1.0)
    assert events == [
        StreamReset(first, H2_CONNECT_ERROR, after_end_stream=False, remote=False),
        StreamReset(second, H2_CONNECT_ERROR, after_end_stream=True, remote=False),
        ConnectionTerminated("transport_closed", H2_INTERNAL_ERROR),
    ]
    # Even the half-closed stream is cut, not EOF: what the local side still sends is lost.
    assert not any(e.is_eof for e in events if isinstance(e, StreamReset))
    assert pair.client.closed
    assert pair.client.receive_data(b"anything", 2.0) == []
    assert pair.client.next_deadline() is None


def test_settings_on_the_wire_match_ztunnel() -> None:
    pair = Pair()
    settings = [f.settings for f in of_type(pair.wire_to_client, SettingsFrame) if f.settings]
    # RFC 9113 §6.5.2 ids: 0x2 ENABLE_PUSH, 0x3 MAX_CONCURRENT_STREAMS, 0x4 INITIAL_WINDOW_SIZE,
    # 0x5 MAX_FRAME_SIZE.
    assert settings[0][0x3] == 200
    assert settings[0][0x4] == 4 * MiB
    assert settings[0][0x5] == 1 * MiB
    client = [f.settings for f in of_type(pair.wire_to_server, SettingsFrame) if f.settings]
    assert client[0][0x2] == 0
    assert client[0][0x4] == 4 * MiB
    assert client[0][0x5] == 1 * MiB
    # Connection window: 65,535 + WINDOW_UPDATE(stream 0) = 16 MiB.
    for wire in (pair.wire_to_client, pair.wire_to_server):
        updates = [f.window_increment for f in of_type(wire, WindowUpdateFrame) if not f.stream_id]
        assert updates == [16 * MiB - 65_535]


def test_connect_with_end_stream_is_a_half_closed_tunnel() -> None:
    # A client with nothing to send (e.g. a FIN before the tunnel was up) may end with HEADERS.
    raw = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    raw.initiate_connection()
    raw.send_headers(1, [(":method", "CONNECT"), (":authority", "[fd00::9]:7")], end_stream=True)
    server = HboneConnection("server", now=0.0)
    events = server.receive_data(raw.data_to_send(), 0.0)
    assert events[-2:] == [
        ConnectRequested(
            1, ConnectRequest.parse([(b":method", b"CONNECT"), (b":authority", b"[fd00::9]:7")])
        ),
        StreamEnded(1),
    ]
    server.respond(1, 200)
    assert server.send_data(1, b"answer", end_stream=True) == 6
    assert server.stream_state(1) is StreamState.CLOSED
    received = raw.receive_data(server.data_to_send())
    assert [type(e).__name__ for e in received][-3:] == [
        "ResponseReceived",
        "DataReceived",
        "StreamEnded",
    ]
