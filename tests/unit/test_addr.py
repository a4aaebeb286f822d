from __future__ import annotations

import pytest

from zt.addr import SocketAddr, parse_ip
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
