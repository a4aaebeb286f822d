from __future__ import annotations

import pytest

from zt.addr import HostPort, SocketAddr, parse_destination, parse_ip
from zt.errors import AddressError


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("10.0.0.1:80", "10.0.0.1:80"),
        ("[fd00::1]:443", "[fd00::1]:443"),
        ("[::ffff:10.0.0.1]:1", "[::ffff:a00:1]:1"),
    ],
)
def test_parse_and_render(text: str, rendered: str) -> None:
    assert str(SocketAddr.parse(text)) == rendered


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.0.0.1", "expected ip:port"),
        ("fd00::1:80", "IPv6 needs brackets"),
        ("10.0.0.1:0", "1..65535"),
        ("10.0.0.1:http", "1..65535"),
        ("[10.0.0.1]:80", "brackets"),
        ("host:80", "IPv4 or IPv6"),
        (":80", "expected ip:port"),
    ],
)
def test_bad_addresses_name_value_and_expectation(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        SocketAddr.parse(text, field="--dst")
    assert str(info.value).startswith("--dst: got ")
    assert fragment in str(info.value)


def test_parse_ip() -> None:
    assert parse_ip(" fd00::1 ").version == 6
    with pytest.raises(AddressError):
        parse_ip("1.2.3")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.1:80", SocketAddr.parse("10.0.0.1:80")),
        ("[fd00::1]:443", SocketAddr.parse("[fd00::1]:443")),
        ("echo:80", HostPort("echo", 80)),
        ("Echo.Default.svc.cluster.local.:8080", HostPort("echo.default.svc.cluster.local", 8080)),
        ("1a.b-2:65535", HostPort("1a.b-2", 65535)),
    ],
)
def test_a_destination_is_an_address_or_a_hostname(text: str, parsed: object) -> None:
    assert parse_destination(text) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("echo", "expected ip:port, [ipv6]:port or hostname:port"),
        ("echo:0", "1..65535"),
        ("echo:65536", "1..65535"),
        ("echo:http", "1..65535"),
        ("echo:\u0663", "1..65535"),  # an Arabic-Indic digit
        ("1.2.3:80", "IPv4 or IPv6"),  # digits and dots: an address gone wrong, not a name
        ("10.0.0.300:80", "IPv4 or IPv6"),
        ("a..b:80", "an empty label"),
        (".a:80", "an empty label"),
        ("-a:80", "label '-a'"),
        ("a-:80", "label 'a-'"),
        ("a_b:80", "label 'a_b'"),
        ("x" * 64 + ".com:80", "a label of 64 characters"),
        ("a." * 126 + "com:80", "255 characters"),
        ("a.123:80", "numeric last label"),
        ("\u212a8s:80", "expected a hostname"),  # KELVIN SIGN lowercases to an ASCII k
    ],
)
def test_bad_destinations_name_value_and_rule(text: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_destination(text, field="--dst")
    assert str(info.value).startswith("--dst: got ") and fragment in str(info.value)


def test_hostport_is_canonical_only() -> None:
    assert str(HostPort("echo.default", 80)) == "echo.default:80"
    for host, port in (("Echo", 80), ("echo.", 80), ("echo", 0), ("", 1)):
        with pytest.raises(AddressError):
            HostPort(host, port)
