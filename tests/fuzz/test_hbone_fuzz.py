"""Hypothesis over the HBONE core: any bytes or frame sequence from a peer gives events or a clean
ConnectionTerminated (PeerProtocolError), never an unexpected exception; parsers raise only
BadConnectRequest."""

from __future__ import annotations

import ipaddress
import itertools
import os

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zt.addr import HostPort, SocketAddr
from zt.hbone import ConnectRequest, HboneConnection, StreamState, parse_authority
from zt.hbone.errors import BadConnectRequest, HboneError, PeerProtocolError
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    DataReceived,
    Event,
    RequestRejected,
)

# ZT_FUZZ_EXAMPLES=20000 for a deep run; the default keeps the suite at a few seconds.
FUZZ = settings(
    max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_START = PREFACE + SettingsFrame(0).serialize()

# Mostly streams a CONNECT opened, sometimes the connection stream, even ids or far-away ids.
stream_ids = st.sampled_from([1, 1, 1, 1, 3, 3, 3, 5, 0, 2, 7, 2**31 - 1])
valid_settings = st.dictionaries(
    st.sampled_from([1, 2, 3, 4, 5, 6]),
    st.one_of(st.sampled_from([0, 1, 100, 16_384, 65_535, 1 << 20]), st.integers(0, 2**32 - 1)),
    max_size=4,
)
small = st.binary(max_size=64)
header_names = st.sampled_from(
    [b":method", b":authority", b":path", b":scheme", b":protocol", b":status", b"baggage",
     b"forwarded", b"traceparent", b"te", b"connection", b"Upper", b"x y", b""]
)  # fmt: skip
header_values = st.one_of(
    st.sampled_from([b"CONNECT", b"GET", b"10.0.0.1:80", b"[::1]:443", b"a.b:80", b"trailers"]),
    st.binary(max_size=40),
)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)
connect_headers = st.builds(
    lambda extra, authority: [(b":method", b"CONNECT"), (b":authority", authority), *extra],
    st.lists(st.tuples(header_names, header_values), max_size=3),
    st.sampled_from([b"10.0.0.1:80", b"[fd00::1]:15008", b"host:80", b"1.2.3.4:0"]),
)


def _on(frame: Frame, sid: int) -> Frame:
    """hyperframe refuses wrong stream ids at construction; a fuzzing peer sends them anyway."""
    frame.stream_id = sid
    return frame


def _flags(frame: Frame, names: list[str]) -> Frame:
    for name in names:
        frame.flags.add(name)
    return frame


def _data(sid: int, size: int, end: bool) -> Frame:
    return _on(_flags(DataFrame(1, bytes(size)), ["END_STREAM"] if end else []), sid)


def _rst(sid: int, code: int) -> Frame:
    frame = RstStreamFrame(1)
    frame.error_code = code
    return _on(frame, sid)


def _window(sid: int, increment: int) -> Frame:
    frame = WindowUpdateFrame(sid)
    frame.window_increment = increment
    return frame


def _settings(values: dict[int, int], ack: bool) -> Frame:
    frame = SettingsFrame(0)
    if ack:
        frame.flags.add("ACK")
    else:
        frame.settings = values
    return frame


def _goaway(last: int, code: int) -> Frame:
    frame = GoAwayFrame(0)
    frame.last_stream_id = last
    frame.error_code = code
    return frame


def _priority(sid: int, depends: int) -> Frame:
    frame = PriorityFrame(1)
    frame.depends_on = depends
    return _on(frame, sid)


# A frame description: the HEADERS variants are encoded later with one shared HPACK encoder.
frame_specs = st.one_of(
    st.tuples(st.just("headers"), st.sampled_from([1, 3, 5, 2, 7]), connect_headers, st.booleans()),
    st.tuples(st.just("headers"), st.sampled_from([1, 3]), header_lists, st.booleans()),
    st.tuples(
        st.just("frame"),
        st.builds(
            _data, stream_ids, st.one_of(st.integers(0, 100), st.integers(0, 70_000)), st.booleans()
        ),
    ),
    st.tuples(st.just("frame"), st.builds(_rst, stream_ids, st.integers(0, 0xFF))),
    st.tuples(st.just("frame"), st.builds(_window, stream_ids, st.integers(0, 2**31 - 1))),
    st.tuples(
        st.just("frame"),
        st.builds(_settings, valid_settings, st.booleans()),
    ),
    st.tuples(
        st.just("frame"),
        st.builds(
            lambda sid, b: _on(PingFrame(0, b), sid), stream_ids, st.binary(min_size=8, max_size=8)
        ),
    ),
    st.tuples(st.just("frame"), st.builds(_goaway, st.integers(0, 9), st.integers(0, 0xC))),
    st.tuples(st.just("frame"), st.builds(_priority, stream_ids, stream_ids)),
    st.tuples(
        st.just("frame"),
        st.builds(lambda sid, b: _on(ContinuationFrame(1, b), sid), stream_ids, small),
    ),
    st.tuples(st.just("raw"), st.binary(max_size=40)),
)


# Two valid tunnels first, so that random frames hit live streams rather than idle ones.
VALID = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")]
OPENING: list[tuple[object, ...]] = [("headers", 1, VALID, False), ("headers", 3, VALID, False)]


def _encode(specs: list[tuple[object, ...]]) -> bytes:
    encoder = hpack.Encoder()
    out = bytearray()
    for spec in specs:
        if spec[0] == "headers":
            _, sid, headers, end = spec
            assert isinstance(sid, int) and isinstance(headers, list)
            frame = HeadersFrame(sid, encoder.encode(headers))
            _flags(frame, ["END_HEADERS", *(["END_STREAM"] if end else [])])
            out += frame.serialize()
        elif spec[0] == "frame":
            assert isinstance(spec[1], Frame)
            out += spec[1].serialize()
        else:
            assert isinstance(spec[1], bytes)
            out += spec[1]
    return bytes(out)


def _drive(conn: HboneConnection, chunks: list[bytes], respond_ok: bool) -> list[Event]:
    """Feed chunks like an adapter would: answer CONNECTs, acknowledge data, tick the clock."""
    seen: list[Event] = []
    now = 0.0
    for chunk in chunks:
        now += 1.0
        events = conn.receive_data(chunk, now)
        events += conn.on_timer(now)
        seen += events
        for event in events:
            _check(event)
            if isinstance(event, ConnectRequested):
                conn.respond(event.stream_id, 200 if respond_ok else 503)
                if respond_ok and conn.stream_state(event.stream_id) is StreamState.OPEN:
                    conn.send_data(event.stream_id, b"hello", end_stream=True)
            elif isinstance(event, DataReceived):
                conn.acknowledge(event.stream_id, event.flow_controlled_length)
        conn.data_to_send()
    return seen


def _check(event: Event) -> None:
    if isinstance(event, ConnectionTerminated) and event.error is not None:
        assert isinstance(event.error, PeerProtocolError)
    if isinstance(event, RequestRejected):
        assert event.status == 400
        assert isinstance(event.error, BadConnectRequest)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 600), max_size=4))
def test_server_core_random_bytes(noise: bytes, cuts: list[int]) -> None:
    server = HboneConnection("server", now=0.0)
    _drive(server, _chunks(CLIENT_START + noise, cuts), respond_ok=True)


@FUZZ
@given(st.binary(max_size=256))
def test_server_core_random_bytes_without_preface(noise: bytes) -> None:
    server = HboneConnection("server", now=0.0)
    _drive(server, [noise], respond_ok=True)


@FUZZ
@given(
    st.lists(frame_specs, max_size=12),
    st.lists(st.integers(0, 200_000), max_size=4),
    st.booleans(),
)
def test_server_core_random_frame_sequences(
    specs: list[tuple[object, ...]], cuts: list[int], respond_ok: bool
) -> None:
    server = HboneConnection("server", now=0.0)
    wire = CLIENT_START + _encode([*OPENING, *specs])
    events = _drive(server, _chunks(wire, cuts), respond_ok)
    deadline = server.next_deadline()
    if deadline is not None:
        events += server.on_timer(deadline)  # a termination pending after our last calls
    if server.closed:
        assert server.receive_data(b"\x00" * 9, 99.0) == []
        assert server.next_deadline() is None
    terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(terminated) == (1 if server.closed else 0)


@FUZZ
@given(st.lists(frame_specs, max_size=10))
def test_client_core_random_frame_sequences(specs: list[tuple[object, ...]]) -> None:
    client = HboneConnection("client", now=0.0)
    client.open_stream(ConnectRequest(SocketAddr(ipaddress.IPv4Address("10.0.0.1"), 80)))
    client.data_to_send()
    wire = SettingsFrame(0).serialize() + _encode(specs)
    _drive(client, [wire], respond_ok=True)


@FUZZ
@given(st.binary(max_size=512))
def test_client_core_random_bytes(noise: bytes) -> None:
    client = HboneConnection("client", now=0.0)
    client.open_stream(ConnectRequest(SocketAddr(ipaddress.IPv4Address("10.0.0.1"), 80)))
    client.data_to_send()
    _drive(client, [SettingsFrame(0).serialize() + noise], respond_ok=True)


@FUZZ
@given(header_lists)
def test_parse_raises_only_bad_connect_request(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        request = ConnectRequest.parse(headers)
    except BadConnectRequest as err:
        assert err.http_status == 400
        assert err.field
    else:
        assert ConnectRequest.parse(request.headers()) == request


@FUZZ
@given(st.binary(max_size=60))
def test_parse_authority_raises_only_bad_connect_request(raw: bytes) -> None:
    try:
        authority = parse_authority(raw)
    except BadConnectRequest as err:
        assert err.field == ":authority"
    else:
        assert 1 <= authority.port <= 65535
        assert ConnectRequest(authority).authority_text.encode().lower() == raw.lower()


@FUZZ
@given(st.ip_addresses(), st.integers(1, 65535), st.text(max_size=20))
def test_authority_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, baggage: str
) -> None:
    request = ConnectRequest(SocketAddr(ip, port))
    assert ConnectRequest.parse(request.headers()).authority == SocketAddr(ip, port)
    assert isinstance(HboneError(), Exception)
    del baggage


_ALNUM = "abcxyzABCXYZ0189"
# RFC 1123 labels: alphanumeric ends, hyphens only inside, 1..63 characters
_LABELS = st.one_of(
    st.sampled_from(_ALNUM),
    st.builds(
        lambda head, inner, tail: head + inner + tail,
        st.sampled_from(_ALNUM),
        st.text(_ALNUM + "-", max_size=61),
        st.sampled_from(_ALNUM),
    ),
)


@FUZZ
@given(st.lists(_LABELS, min_size=1, max_size=6), st.integers(1, 65535))
def test_hostname_authority_round_trip_or_400(labels: list[str], port: int) -> None:
    """Any name made of RFC 1123 labels parses to the lowercased name (or, over 253 characters or
    with a numeric last label, is a 400) and survives headers() -> parse()."""
    raw = f"{'.'.join(labels)}:{port}".encode()
    try:
        authority = parse_authority(raw)
    except BadConnectRequest as err:
        assert err.field == ":authority"
        assert len(raw) - len(str(port)) - 1 > 253 or labels[-1].isdigit()
        return
    assert authority == HostPort(".".join(labels).lower(), port)
    request = ConnectRequest(authority)
    assert ConnectRequest.parse(request.headers()) == request
