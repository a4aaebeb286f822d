"""PROXY protocol v2 (zt/proxy/proxyv2.py): the exact bytes ztunnel's write_proxy_protocol
writes (haproxy proxy-protocol.txt §2.2), and the parser the tests read them back with."""

from __future__ import annotations

import pytest

from zt.addr import SocketAddr
from zt.proxy.proxyv2 import ProxyHeaderError, encode, parse

SPIFFE = "spiffe://cluster.local/ns/default/sa/client"


def test_ipv4_with_identity_exact_bytes() -> None:
    header = encode(SocketAddr.parse("10.0.0.1:1234"), SocketAddr.parse("10.0.0.2:8080"), SPIFFE)
    tlv = bytes([0xD0, 0x00, len(SPIFFE)]) + SPIFFE.encode()
    assert header == (
        b"\r\n\r\n\x00\r\nQUIT\n"  # signature
        + b"\x21"  # version 2, PROXY
        + b"\x11"  # AF_INET, STREAM
        + (12 + len(tlv)).to_bytes(2, "big")
        + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        + (1234).to_bytes(2, "big")
        + (8080).to_bytes(2, "big")
        + tlv
    )
    assert len(header) == 16 + 12 + 3 + 43  # the id is 43 characters


def test_ipv6_without_identity_exact_bytes() -> None:
    header = encode(SocketAddr.parse("[fd00::1]:40000"), SocketAddr.parse("[fd00::2]:80"))
    src = bytes.fromhex("fd000000000000000000000000000001")
    dst = bytes.fromhex("fd000000000000000000000000000002")
    fixed = b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x24"
    assert header == fixed + src + dst + b"\x9c\x40\x00\x50"


def test_mixed_families_are_unspec_without_addresses() -> None:
    header = encode(SocketAddr.parse("10.0.0.1:1"), SocketAddr.parse("[fd00::2]:80"), "x")
    assert header == b"\r\n\r\n\x00\r\nQUIT\n\x21\x01\x00\x04" + b"\xd0\x00\x01x"
    parsed = parse(header)
    assert (parsed.source, parsed.destination, parsed.identity) == (None, None, "x")


def test_parse_reads_back_what_encode_wrote_and_stops_at_its_end() -> None:
    src, dst = SocketAddr.parse("10.0.0.1:1234"), SocketAddr.parse("10.10.0.1:80")
    header = encode(src, dst, SPIFFE)
    parsed = parse(header + b"GET / HTTP/1.1\r\n")
    assert (parsed.source, parsed.destination, parsed.identity) == (src, dst, SPIFFE)
    assert parsed.length == len(header) and parsed.command == 1


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\r\n\r\n\x00\r\nQUIT", "shorter than"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY v2 signature"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(4), "the header says 28"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0e" + bytes(12) + b"\xd0\x00", "stray bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0f" + bytes(12) + b"\xd0\x00\x09", "overruns"),
    ],
)
def test_parse_refuses_what_is_not_a_whole_header(data: bytes, says: str) -> None:
    with pytest.raises(ProxyHeaderError, match=says):
        parse(data)
