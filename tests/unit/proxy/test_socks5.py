from __future__ import annotations

import pytest

from zt.addr import HostPort, SocketAddr
from zt.proxy.socks5 import (
    REP_ATYP_UNSUPPORTED,
    REP_CMD_UNSUPPORTED,
    REP_HOST_UNREACHABLE,
    REP_NOT_ALLOWED,
    SocksError,
    parse_connect,
    parse_greeting,
    reply,
)


def test_greeting_incomplete_then_no_auth_selected() -> None:
    assert parse_greeting(b"\x05") is None
    assert parse_greeting(b"\x05\x02\x02") is None
    greeting = parse_greeting(b"\x05\x02\x02\x00rest")
    assert greeting is not None and (greeting.consumed, greeting.answer) == (4, b"\x05\x00")


def test_greeting_without_no_auth_gets_ff_and_bad_version_raises() -> None:
    greeting = parse_greeting(b"\x05\x01\x02")
    assert greeting is not None and greeting.answer == b"\x05\xff"
    with pytest.raises(SocksError, match="version 4"):
        parse_greeting(b"\x04\x01\x00")


def test_connect_v4_and_v6() -> None:
    v4 = b"\x05\x01\x00\x01" + bytes([10, 2, 0, 2]) + (8080).to_bytes(2, "big")
    assert parse_connect(v4[:-1]) is None
    cmd = parse_connect(v4)
    assert cmd is not None and cmd.destination == SocketAddr.parse("10.2.0.2:8080")
    v6 = b"\x05\x01\x00\x04" + SocketAddr.parse("[fd00::2]:1").ip.packed + b"\x00\x50"
    cmd6 = parse_connect(v6)
    assert cmd6 is not None and str(cmd6.destination) == "[fd00::2]:80" and cmd6.consumed == 22


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"\x05\x02\x00\x01\x0a\x00\x00\x01\x00\x50", REP_CMD_UNSUPPORTED),
        (b"\x05\x01\x00\x09", REP_ATYP_UNSUPPORTED),
    ],
)
def test_connect_refusals_carry_their_reply_code(request_bytes: bytes, code: int) -> None:
    with pytest.raises(SocksError) as info:
        parse_connect(request_bytes)
    assert info.value.reply == code


def _domain(name: bytes, port: int = 80) -> bytes:
    # RFC 1928 §4: ATYP 3, one octet of length, the name (no NUL), the port
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("name", "destination"),
    [
        (b"echo.default.svc.cluster.local", HostPort("echo.default.svc.cluster.local", 80)),
        (b"Echo.", HostPort("echo", 80)),  # an FQDN's root dot; case folded
        (b"10.2.0.2", SocketAddr.parse("10.2.0.2:80")),  # clients send literals as names too
        (b"fd00::2", SocketAddr.parse("[fd00::2]:80")),
    ],
)
def test_connect_domain_name(name: bytes, destination: object) -> None:
    request = _domain(name) + b"first app bytes"
    for cut in range(len(_domain(name))):
        assert parse_connect(request[:cut]) is None  # incomplete: wait for more
    cmd = parse_connect(request)
    assert cmd is not None and cmd.destination == destination
    assert cmd.consumed == len(_domain(name))


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (_domain(b""), REP_HOST_UNREACHABLE),
        (_domain(b"bad_name"), REP_HOST_UNREACHABLE),
        (_domain(b"a..b"), REP_HOST_UNREACHABLE),
        (_domain(b"fe80::1%eth0"), REP_HOST_UNREACHABLE),
        (_domain(b"x" * 64), REP_HOST_UNREACHABLE),
        (_domain("caf\u00e9".encode()), REP_HOST_UNREACHABLE),
        (_domain(b"echo", 0), REP_NOT_ALLOWED),
    ],
)
def test_connect_bad_domain_names_are_unreachable_hosts(request_bytes: bytes, code: int) -> None:
    with pytest.raises(SocksError) as info:
        parse_connect(request_bytes)
    assert info.value.reply == code


def test_reply_encoding() -> None:
    assert reply(0) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert reply(0, SocketAddr.parse("[::1]:2"))[3:] == b"\x04" + b"\x00" * 15 + b"\x01\x00\x02"
