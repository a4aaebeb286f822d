"""The loop guard's pure decisions (zt/state/loopguard.py) and the `--allow` parser."""

from __future__ import annotations

import ipaddress

import pytest

from zt.addr import IpAddress, SocketAddr
from zt.config import load_document
from zt.errors import UsageError
from zt.state import (
    DEFAULT_ILLEGAL_PORTS,
    AllowList,
    AllowRule,
    DestinationNotAllowed,
    LoopGuardRefused,
    StandaloneGuard,
    check_inbound,
    check_outbound,
    illegal_ports,
    own_ips,
    parse_allow,
)

ZT_PORTS = [15001, 15006, 15008, 15080, 15020, 15021, 15000, 15053]


def _a(text: str) -> SocketAddr:
    return SocketAddr.parse(text)


def _ip(text: str) -> IpAddress:
    return ipaddress.ip_address(text)


def test_default_set_is_ztunnels_illegal_ports() -> None:
    assert sorted(DEFAULT_ILLEGAL_PORTS) == sorted(ZT_PORTS)


def test_configured_ports_join_the_set_and_zero_is_ignored() -> None:
    assert illegal_ports((9090, 0, 15020)) == DEFAULT_ILLEGAL_PORTS | {9090}


@pytest.mark.parametrize("port", ZT_PORTS)
def test_inbound_refuses_every_zt_port(port: int) -> None:
    refusal = check_inbound(_a(f"10.1.0.2:{port}"), DEFAULT_ILLEGAL_PORTS)
    assert refusal is not None
    error = refusal.error()
    assert isinstance(error, LoopGuardRefused)
    assert (error.http_status, error.reason) == (400, "loop_guard")
    assert f"10.1.0.2:{port}" in str(error) and "loop guard" in str(error)


def test_inbound_admits_an_app_port_and_a_configured_port_is_refused() -> None:
    assert check_inbound(_a("10.1.0.2:8080"), DEFAULT_ILLEGAL_PORTS) is None
    assert check_inbound(_a("10.1.0.2:9090"), illegal_ports((9090,))) is not None


@pytest.mark.parametrize(
    "dst",
    ["127.0.0.1:15000", "127.0.0.5:15006", "[::1]:15008", "0.0.0.0:15001", "10.1.0.2:15006",
     "[fd00:1::2]:15080", "[::ffff:127.0.0.1]:15021", "[::ffff:10.1.0.2]:15006"],
)  # fmt: skip
def test_outbound_refuses_zt_ports_on_loopback_and_own_addresses(dst: str) -> None:
    own = frozenset({_ip("10.1.0.2"), _ip("fd00:1::2")})
    refusal = check_outbound(_a(dst), own, DEFAULT_ILLEGAL_PORTS)
    assert refusal is not None and "local address" in refusal.why


@pytest.mark.parametrize("dst", ["10.2.0.2:15008", "10.2.0.2:15006", "127.0.0.1:8080"])
def test_outbound_admits_remote_zt_ports_and_local_app_ports(dst: str) -> None:
    own = frozenset({_ip("10.1.0.2")})
    assert check_outbound(_a(dst), own, DEFAULT_ILLEGAL_PORTS) is None


def test_own_ips_are_every_address_of_the_nodes_hbone_workloads() -> None:
    snapshot = load_document(
        {
            "workloads": [
                {"uid": "a", "name": "a", "node": "n1", "workloadIps": ["10.1.0.2", "fd00:1::2"],
                 "protocol": "HBONE"},
                {"uid": "b", "name": "b", "node": "n1", "workloadIps": ["10.1.0.3"],
                 "protocol": "HBONE"},
                {"uid": "c", "name": "c", "node": "n2", "workloadIps": ["10.2.0.2"],
                 "protocol": "HBONE"},
                {"uid": "d", "name": "d", "node": "n1", "workloadIps": ["10.1.0.4"],
                 "protocol": "TCP"},
            ]
        },
        "test",
    )  # fmt: skip
    # d is a TCP workload: outside capture, zt listens on none of its addresses
    assert own_ips(snapshot, "n1") == {_ip("10.1.0.2"), _ip("fd00:1::2"), _ip("10.1.0.3")}


# -- --allow parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "network", "ports"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None),
        ("127.0.0.0/8:8080", "127.0.0.0/8", ((8080, 8080),)),
        ("192.0.2.7:80-90", "192.0.2.7/32", ((80, 90),)),
        ("192.0.2.7", "192.0.2.7/32", None),
        ("10.0.0.0/8:80,443,8000-8100", "10.0.0.0/8", ((80, 80), (443, 443), (8000, 8100))),
        ("fd00::/64:443", "fd00::/64", ((443, 443),)),
        ("[fd00::]/64:443", "fd00::/64", ((443, 443),)),
        ("[::1]:8080", "::1/128", ((8080, 8080),)),
        ("::1", "::1/128", None),
        ("fd00::/64", "fd00::/64", None),
    ],
)
def test_allow_parses_cidr_and_ports(
    text: str, network: str, ports: tuple[tuple[int, int], ...] | None
) -> None:
    assert parse_allow(text) == AllowRule(ipaddress.ip_network(network), ports)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not a network"),
        ("10.0.0.0/33", "not a network"),
        ("10.0.0.1/8", "not a network"),  # host bits set: a typo, not a network
        ("example.com:80", "not a network"),
        ("10.0.0.0/8:0", "port '0' is not in 1..65535"),
        ("10.0.0.0/8:70000", "not in 1..65535"),
        ("10.0.0.0/8:http", "port 'http'"),
        ("10.0.0.0/8:90-80", "runs backwards"),
        ("10.0.0.0/8:80,", "port ''"),
        ("[fd00::/64", "unclosed"),
        ("10.0.0.0/8x", "unexpected 'x'"),
    ],
)
def test_bad_allow_names_flag_value_and_form(text: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_allow(text, flag="--allow")
    message = str(caught.value)
    assert message.startswith(f"--allow: got {text!r}")
    assert says in message
    assert "expected CIDR[:PORTS]" in message
    assert caught.value.exit_code == 2


def test_empty_allow_list_admits_everything_but_loopback() -> None:
    allow = AllowList()
    assert allow.permits(_a("10.9.9.9:22"))
    assert allow.permits(_a("[fd00::1]:80"))
    assert not allow.permits(_a("127.0.0.1:8080"))
    assert not allow.permits(_a("[::1]:8080"))
    assert not allow.permits(_a("[::ffff:127.0.0.1]:8080"))


def test_loopback_needs_a_rule_inside_loopback() -> None:
    wide = AllowList.parse(["0.0.0.0/0", "::/0"])
    assert wide.permits(_a("10.9.9.9:22"))
    assert not wide.permits(_a("127.0.0.1:8080"))
    assert not wide.permits(_a("[::1]:8080"))
    local = AllowList.parse(["127.0.0.0/8:8000-8100", "::1"])
    assert local.permits(_a("127.0.0.1:8080"))
    assert local.permits(_a("[::1]:22"))
    assert not local.permits(_a("127.0.0.1:22"))  # outside the rule's ports
    assert not local.permits(_a("10.9.9.9:8080"))  # an allow-list admits only what it names


# -- the standalone server ----------------------------------------------------------------------

LOCAL = {"192.0.2.10"}


def _local(ip: IpAddress) -> bool:
    return str(ip) in LOCAL


def _standalone(listen: str, *allow: str) -> StandaloneGuard:
    return StandaloneGuard(_a(listen), AllowList.parse(allow))


@pytest.mark.parametrize(
    ("listen", "dst"),
    [
        ("127.0.0.1:4000", "127.0.0.1:4000"),
        ("0.0.0.0:4000", "127.0.0.1:4000"),
        ("0.0.0.0:4000", "192.0.2.10:4000"),  # any local address when listening on a wildcard
        ("[::]:4000", "[::ffff:192.0.2.10]:4000"),
        ("[::]:4000", "[::1]:4000"),
        ("192.0.2.10:4000", "0.0.0.0:4000"),
    ],
)
def test_standalone_refuses_its_own_listener_even_when_allowed(listen: str, dst: str) -> None:
    guard = _standalone(listen, "0.0.0.0/0", "127.0.0.0/8", "::/0", "::1")
    refusal = guard.check(_a(dst), _local)
    assert refusal is not None and refusal.loop
    assert isinstance(refusal.error(), LoopGuardRefused)


def test_standalone_same_port_elsewhere_is_not_its_listener() -> None:
    guard = _standalone("127.0.0.1:4000", "10.0.0.0/8")
    assert guard.check(_a("10.0.0.5:4000"), _local) is None


@pytest.mark.parametrize("port", ZT_PORTS)
def test_standalone_refuses_zt_ports_on_local_addresses_even_when_allowed(port: int) -> None:
    guard = _standalone("0.0.0.0:4000", "127.0.0.0/8", "192.0.2.0/24")
    for dst in (f"127.0.0.1:{port}", f"192.0.2.10:{port}"):
        refusal = guard.check(_a(dst), _local)
        assert refusal is not None and refusal.loop, dst
    assert guard.check(_a(f"192.0.2.11:{port}"), _local) is None  # another host's proxy port


def test_standalone_outside_the_allow_list_is_401() -> None:
    refusal = _standalone("0.0.0.0:4000").check(_a("127.0.0.1:8080"), _local)
    assert refusal is not None and not refusal.loop
    error = refusal.error()
    assert isinstance(error, DestinationNotAllowed)
    assert (error.http_status, error.reason) == (401, "destination_not_allowed")
    assert "127.0.0.1:8080" in str(error) and "explicit --allow" in str(error)
    refusal = _standalone("0.0.0.0:4000", "10.0.0.0/8").check(_a("172.16.0.1:80"), _local)
    assert refusal is not None and "outside every --allow" in str(refusal.error())


def test_standalone_admits_allowed_destinations() -> None:
    assert _standalone("0.0.0.0:4000").check(_a("10.9.9.9:80"), _local) is None
    assert _standalone("0.0.0.0:4000", "127.0.0.1:8080").check(_a("127.0.0.1:8080"), _local) is None


def test_standalone_asks_about_locality_only_for_ports_that_could_loop() -> None:
    asked: list[IpAddress] = []

    def spy(ip: IpAddress) -> bool:
        asked.append(ip)
        return False

    _standalone("0.0.0.0:4000").check(_a("10.9.9.9:80"), spy)
    assert asked == []
    _standalone("0.0.0.0:4000").check(_a("10.9.9.9:15000"), spy)
    assert asked == [_ip("10.9.9.9")]
