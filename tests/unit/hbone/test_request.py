"""CONNECT request building and strict parsing (docs/design.md §2 request format)."""

from __future__ import annotations

import ipaddress

import pytest

from zt.addr import HostPort, SocketAddr
from zt.errors import ZtError
from zt.hbone.errors import BadConnectRequest
from zt.hbone.request import (
    ConnectRequest,
    new_traceparent,
    parse_authority,
    parse_response,
    response_headers,
)

V4 = ipaddress.IPv4Address("10.0.0.7")
V6 = ipaddress.IPv6Address("fd00::7")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def base(authority: bytes = b"10.0.0.7:8080") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"CONNECT"), (b":authority", authority)]


def test_headers_ipv4_minimal() -> None:
    assert ConnectRequest(SocketAddr(V4, 8080)).headers() == base()


def test_headers_ipv6_with_context_headers() -> None:
    request = ConnectRequest(
        SocketAddr(V6, 443), baggage="k=v", forwarded_for="[fd00::1]:5555", traceparent=TRACEPARENT
    )
    assert request.headers() == [
        (b":method", b"CONNECT"),
        (b":authority", b"[fd00::7]:443"),
        (b"baggage", b"k=v"),
        (b"forwarded", b'for="[fd00::1]:5555"'),
        (b"traceparent", TRACEPARENT.encode()),
    ]


@pytest.mark.parametrize(
    "request_",
    [
        ConnectRequest(SocketAddr(V4, 1)),
        ConnectRequest(SocketAddr(V6, 65535), baggage="a=1,b=2"),
        ConnectRequest(SocketAddr(V4, 80), forwarded_for="10.0.0.1:34567", traceparent=TRACEPARENT),
    ],
)
def test_parse_inverts_headers(request_: ConnectRequest) -> None:
    assert ConnectRequest.parse(request_.headers()) == request_


def test_parse_tolerates_envoy_minimal_request() -> None:
    # Envoy sends :method and :authority only (docs/design.md §2: Receivers must tolerate their absence).
    assert ConnectRequest.parse(base(b"[fd00::7]:15008")) == ConnectRequest(SocketAddr(V6, 15008))


@pytest.mark.parametrize(
    ("authority", "ip", "port"),
    [
        (b"1.2.3.4:1", "1.2.3.4", 1),
        (b"[::1]:65535", "::1", 65535),
        (b"[::ffff:1.2.3.4]:80", "::ffff:1.2.3.4", 80),
        (b"[FD00::A]:80", "fd00::a", 80),
    ],
)
def test_authority_accepted(authority: bytes, ip: str, port: int) -> None:
    assert parse_authority(authority) == SocketAddr(ipaddress.ip_address(ip), port)


@pytest.mark.parametrize(
    ("authority", "host", "port"),
    [
        (b"echo.default.svc.cluster.local:80", "echo.default.svc.cluster.local", 80),
        (b"Echo.Default.SVC.cluster.local:8080", "echo.default.svc.cluster.local", 8080),
        (b"a:1", "a", 1),
        (b"1x.2y:65535", "1x.2y", 65535),
        (b"x" * 63 + b".com:443", "x" * 63 + ".com", 443),
        (b"a." * 125 + b"com:80", "a." * 125 + "com", 80),  # 253 characters
    ],
)
def test_hostname_authority_accepted_lowercased(authority: bytes, host: str, port: int) -> None:
    # ztunnel accepts a service hostname in `:authority` (its HboneAddress::SvcHostname)
    parsed = ConnectRequest.parse(base(authority))
    assert parsed.authority == HostPort(host, port)
    assert ConnectRequest.parse(parsed.headers()) == parsed
    assert parsed.authority_text == authority.decode().lower()


@pytest.mark.parametrize(
    "authority",
    [
        b"1.2.3:80",  # digits and dots are an IP literal or nothing: never a name
        b"1.2.3.4.5:80",
        b"example.com",  # a hostname without a port
        b"example.com:0",
        b"example.com:65536",
        b"example.com:+80",
        b"example..com:80",  # an empty label
        b".example.com:80",
        b"example.com.:80",  # a trailing dot: peers send names as the mesh has them
        b"-example.com:80",  # a label starting or ending with '-'
        b"example-.com:80",
        b"exa_mple.com:80",  # characters outside RFC 1123
        b"exa mple.com:80",
        b"ex\xc3\xa4mple.com:80",
        b"user@example.com:80",
        b"example.123:80",  # a numeric last label (RFC 1123 §2.1)
        b"x" * 64 + b".com:80",  # a label longer than 63
        b"a." * 126 + b"com:80",  # a name longer than 253
        b"1.2.3.4",  # no port
        b"1.2.3.4:0",
        b"1.2.3.4:65536",
        b"1.2.3.4:080",
        b"1.2.3.4:+80",
        b"1.2.3.4: 80",
        b"1.2.3.4:\xd9\xa3",  # an Arabic-Indic digit
        b"fd00::1:80",  # IPv6 without brackets
        b"[1.2.3.4]:80",  # IPv4 in brackets
        b"[fe80::1%eth0]:80",  # zone id
        b"user@1.2.3.4:80",
        b"01.2.3.4:80",  # leading zero (octal ambiguity)
        b"1.2.3:80",
        b":80",
        b"",
        b"[]:80",
    ],
)
def test_authority_refused_with_400_naming_the_header(authority: bytes) -> None:
    with pytest.raises(BadConnectRequest) as info:
        ConnectRequest.parse(base(authority))
    assert info.value.field == ":authority"
    assert info.value.http_status == 400
    assert isinstance(info.value, ZtError)
    assert ":authority" in str(info.value)


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ([(b":method", b"GET"), (b":authority", b"1.2.3.4:80")], ":method"),
        ([(b":authority", b"1.2.3.4:80")], ":method"),
        ([(b":method", b"CONNECT")], ":authority"),
        ([*base(), (b":path", b"/")], ":path"),
        ([*base(), (b":scheme", b"https")], ":scheme"),
        ([*base(), (b":protocol", b"websocket")], ":protocol"),
        ([*base(), (b":status", b"200")], ":status"),
        ([*base(), (b":authority", b"1.2.3.4:81")], ":authority"),
        (
            [(b":method", b"CONNECT"), (b"baggage", b"a=1"), (b":authority", b"1.2.3.4:80")],
            ":authority",
        ),
        ([*base(), (b"Baggage", b"a=1")], "header name"),
        ([*base(), (b"connection", b"close")], "connection"),
        ([*base(), (b"te", b"gzip")], "te"),
        ([*base(), (b"baggage", b"a=1\r\nx: y")], "baggage"),
        ([*base(), (b"baggage", b" a=1")], "baggage"),
        ([*base(), (b"forwarded", b"garbage")], "forwarded"),
    ],
)
def test_malformed_requests_name_the_field(headers: list[tuple[bytes, bytes]], field: str) -> None:
    with pytest.raises(BadConnectRequest) as info:
        ConnectRequest.parse(headers)
    assert info.value.field == field
    assert info.value.reason == "bad_request"


def test_te_trailers_allowed() -> None:
    assert ConnectRequest.parse([*base(), (b"te", b"trailers")]) == ConnectRequest(
        SocketAddr(V4, 8080)
    )


@pytest.mark.parametrize(
    ("value", "node"),
    [
        (b'for="[2001:db8::1]:4711"', "[2001:db8::1]:4711"),
        (b"for=192.0.2.43", "192.0.2.43"),
        (b'proto=http;for="10.0.0.1:80";by=203.0.113.43', "10.0.0.1:80"),
        (b"by=1.2.3.4, for=5.6.7.8", "5.6.7.8"),
        (b"proto=https", None),
    ],
)
def test_forwarded_for(value: bytes, node: str | None) -> None:
    assert ConnectRequest.parse([*base(), (b"forwarded", value)]).forwarded_for == node


def test_repeated_baggage_headers_are_joined() -> None:
    parsed = ConnectRequest.parse([*base(), (b"baggage", b"a=1"), (b"baggage", b"b=2")])
    assert parsed.baggage == "a=1,b=2"


@pytest.mark.parametrize(
    "value",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 has 4 fields
        "junk",
    ],
)
def test_invalid_traceparent_is_ignored_not_refused(value: str) -> None:
    # W3C Trace Context §4.3: an unparsable traceparent restarts the trace; it is not an error.
    parsed = ConnectRequest.parse([*base(), (b"traceparent", value.encode())])
    assert parsed.traceparent is None


def test_future_traceparent_version_may_carry_more_fields() -> None:
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
    assert ConnectRequest.parse([*base(), (b"traceparent", value.encode())]).traceparent == value


def test_new_traceparent_is_valid_and_never_all_zero() -> None:
    zero = new_traceparent(bytes)
    assert zero == "00-00000000000000000000000000000001-0000000000000001-00"
    assert ConnectRequest(SocketAddr(V4, 1), traceparent=zero).headers()[-1] == (
        b"traceparent",
        zero.encode(),
    )
    fresh = new_traceparent(sampled=True)
    parsed = ConnectRequest.parse([*base(), (b"traceparent", fresh.encode())])
    assert parsed.traceparent == fresh
    assert fresh.endswith("-01")


def test_request_validates_its_own_port() -> None:
    with pytest.raises(BadConnectRequest) as info:
        ConnectRequest(SocketAddr(V4, 0))
    assert info.value.field == "authority port"


def test_response_headers_and_parse() -> None:
    assert response_headers(200, "ignored") == [(b":status", b"200")]
    failed = response_headers(401, "policy_denied")
    assert failed == [(b":status", b"401"), (b"zt-reason", b"policy_denied")]
    assert parse_response(failed) == (401, "policy_denied")
    assert parse_response([(b":status", b"503")]) == (503, "Service Unavailable")
    assert parse_response([(b":status", b"200")]) == (200, "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("baggage", "a=1\r\nx: y"),
        ("traceparent", ""),
        ("forwarded_for", '1.2.3.4:5" , for="6.7.8.9:1'),
        ("forwarded_for", "bad\x00"),
        ("baggage", "k=\u20ac"),  # beyond Latin-1: not representable as header octets
    ],
)
def test_request_refuses_header_injection(field: str, value: str) -> None:
    with pytest.raises(BadConnectRequest) as info:
        ConnectRequest(SocketAddr(V4, 80), **{field: value})
    assert info.value.field == field


def test_reason_is_sanitised() -> None:
    headers = response_headers(503, "dial\r\nfailed: é" + "x" * 200)
    assert headers[1][0] == b"zt-reason"
    assert headers[1][1].startswith(b"dial??failed: ?x")
    assert len(headers[1][1]) == 128
    assert response_headers(503, "\r\n") == [(b":status", b"503"), (b"zt-reason", b"??")]


def test_high_octets_round_trip() -> None:
    parsed = ConnectRequest.parse([*base(), (b"baggage", b"k=\xe9")])
    assert parsed.baggage == "k=\xe9"
    assert parsed.headers()[-1] == (b"baggage", b"k=\xe9")
