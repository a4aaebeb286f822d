"""Every routing branch of docs/design.md §5."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from zt.addr import SocketAddr
from zt.config import load_document
from zt.state import RouteKind, Snapshot, route

SVC = "default/echo.default.svc.cluster.local"


def _w(uid: str, ip: str | list[str], **extra: Any) -> dict[str, Any]:
    base = {"uid": uid, "name": uid, "namespace": "default", "protocol": "HBONE"}
    ips = [ip] if isinstance(ip, str) else ip
    return {**base, "workloadIps": ips, **extra}


def _mesh(**overrides: Any) -> Snapshot:
    doc: dict[str, Any] = {
        "workloads": [
            _w("src", "10.1.0.2", serviceAccount="frontend"),
            _w("b1", ["10.2.0.2", "fd00:2::2"], serviceAccount="echo", services={SVC: {80: 8080}}),
            _w("b2", ["10.2.0.3", "fd00:2::3"], serviceAccount="echo", services={SVC: {80: 8080}}),
            _w("db", "10.2.0.10", protocol="TCP"),
            _w("far", "10.5.0.1", network="other-net"),
        ],
        "services": [
            {
                "name": "echo",
                "namespace": "default",
                "hostname": "echo.default.svc.cluster.local",
                "vips": ["/10.96.0.10", "/fd00:96::10"],
                "ports": {80: 8080, 443: 0},
                "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/echo-svc"],
            }
        ],
    }
    doc.update(overrides)
    # port 443 has no service-level target: every endpoint must map it
    for w in doc["workloads"]:
        if SVC in w.get("services", {}):
            w["services"][SVC].setdefault(443, 8443)
    return load_document(doc, "test")


def _route(snapshot: Snapshot, dst: str, src: str = "src", seed: int = 0) -> Any:
    return route(SocketAddr.parse(dst), snapshot.by_uid[src], snapshot, seed=seed)


ZT_PORTS = [15001, 15006, 15008, 15080, 15020, 15021, 15000, 15053]


@pytest.mark.parametrize("port", ZT_PORTS)
@pytest.mark.parametrize("dst", ["127.0.0.1", "[::1]", "10.1.0.2", "10.2.0.2"])
def test_zt_ports_on_loopback_and_own_addresses_are_refused(port: int, dst: str) -> None:
    own = frozenset({ipaddress.ip_address("10.1.0.2"), ipaddress.ip_address("10.2.0.2")})
    snapshot = _mesh()
    r = route(SocketAddr.parse(f"{dst}:{port}"), snapshot.by_uid["src"], snapshot, own_ips=own)
    assert r.kind is RouteKind.REFUSED and r.loop_guard
    assert "loop guard" in r.reason and f":{port}" in r.reason


@pytest.mark.parametrize("port", ZT_PORTS)
def test_zt_ports_of_a_remote_workload_are_carried_over_hbone(port: int) -> None:
    """Not refused here: the remote inbound answers 400 for its own port (ztunnel does the same)."""
    r = _route(_mesh(), f"10.2.0.2:{port}")
    assert (r.kind, str(r.next_hop), str(r.authority)) == (
        RouteKind.HBONE,
        "10.2.0.2:15008",
        f"10.2.0.2:{port}",
    )
    assert not r.loop_guard


def test_zt_ports_outside_the_mesh_pass_through() -> None:
    r = _route(_mesh(), "192.0.2.1:15008")
    assert r.kind is RouteKind.PASSTHROUGH


def test_a_service_port_translated_to_a_zt_port_on_an_own_pod_is_refused() -> None:
    workloads = [_w("src", "10.1.0.2"), _w("b1", "10.2.0.2", services={SVC: {80: 15006, 443: 1}})]
    snapshot = _mesh(workloads=workloads)
    own = frozenset({ipaddress.ip_address("10.2.0.2")})
    dst = SocketAddr.parse("10.96.0.10:80")
    r = route(dst, snapshot.by_uid["src"], snapshot, own_ips=own)
    assert r.kind is RouteKind.REFUSED and r.loop_guard
    assert r.service == SVC and "10.2.0.2:15006" in r.reason
    assert route(dst, snapshot.by_uid["src"], snapshot).kind is RouteKind.HBONE  # remote pod


def test_a_configured_port_is_refused_on_loopback() -> None:
    snapshot = _mesh()
    src = snapshot.by_uid["src"]
    dst = SocketAddr.parse("127.0.0.1:9090")
    assert route(dst, src, snapshot).kind is RouteKind.PASSTHROUGH
    r = route(dst, src, snapshot, illegal_ports=frozenset({9090}))
    assert r.kind is RouteKind.REFUSED and r.loop_guard


def test_vip_goes_to_an_endpoint_with_target_port_over_hbone() -> None:
    r = _route(_mesh(), "10.96.0.10:80")
    assert r.kind is RouteKind.HBONE
    assert r.service == SVC
    ip = str(r.authority.ip)
    assert ip in {"10.2.0.2", "10.2.0.3"}
    assert str(r.next_hop) == f"{ip}:15008"
    assert str(r.authority) == f"{ip}:8080"
    assert r.expected_identities == (
        "spiffe://cluster.local/ns/default/sa/echo",
        "spiffe://cluster.local/ns/default/sa/echo-svc",
    )


def test_vip_v6_picks_the_endpoint_v6_address() -> None:
    r = _route(_mesh(), "[fd00:96::10]:80")
    assert str(r.next_hop) in {"[fd00:2::2]:15008", "[fd00:2::3]:15008"}
    assert str(r.authority).endswith("]:8080")


def test_endpoint_mapping_decides_when_service_target_is_zero() -> None:
    r = _route(_mesh(), "10.96.0.10:443")
    assert r.authority is not None and r.authority.port == 8443


def test_endpoint_choice_is_deterministic_per_seed_and_spreads() -> None:
    snapshot = _mesh()
    first = [_route(snapshot, "10.96.0.10:80", seed=s).destination_workload for s in range(40)]
    again = [_route(snapshot, "10.96.0.10:80", seed=s).destination_workload for s in range(40)]
    assert first == again
    assert set(first) == {"b1", "b2"}


def test_unhealthy_endpoints_are_skipped() -> None:
    snapshot = _mesh()
    doc_b1_down = [
        {**_w("src", "10.1.0.2")},
        _w("b1", "10.2.0.2", services={SVC: {80: 8080, 443: 1}}, status="Unhealthy"),
        _w("b2", "10.2.0.3", services={SVC: {80: 8080, 443: 1}}),
    ]
    snapshot = _mesh(workloads=doc_b1_down)
    assert {_route(snapshot, "10.96.0.10:80", seed=s).destination_workload for s in range(20)} == {
        "b2"
    }


def test_no_healthy_endpoint_is_refused() -> None:
    workloads = [
        _w("src", "10.1.0.2"),
        _w("b1", "10.2.0.2", services={SVC: {80: 8080, 443: 1}}, status="Unhealthy"),
    ]
    r = _route(_mesh(workloads=workloads), "10.96.0.10:80")
    assert r.kind is RouteKind.REFUSED
    assert "no healthy endpoint" in r.reason


def test_vip_port_not_in_service_is_refused() -> None:
    r = _route(_mesh(), "10.96.0.10:81")
    assert r.kind is RouteKind.REFUSED
    assert "has no port 81" in r.reason


def test_direct_hbone_workload() -> None:
    r = _route(_mesh(), "10.2.0.3:9000")
    assert (r.kind, str(r.next_hop), str(r.authority)) == (
        RouteKind.HBONE,
        "10.2.0.3:15008",
        "10.2.0.3:9000",
    )
    assert r.expected_identities == ("spiffe://cluster.local/ns/default/sa/echo",)
    assert r.destination_workload == "b2"


def test_tcp_workload_is_plain_tcp() -> None:
    r = _route(_mesh(), "10.2.0.10:5432")
    assert (r.kind, str(r.next_hop), r.authority, r.expected_identities) == (
        RouteKind.TCP,
        "10.2.0.10:5432",
        None,
        (),
    )


def test_tcp_endpoint_behind_a_service() -> None:
    workloads = [
        _w("src", "10.1.0.2"),
        _w("b1", "10.2.0.2", protocol="TCP", services={SVC: {80: 8080, 443: 1}}),
    ]
    r = _route(_mesh(workloads=workloads), "10.96.0.10:80")
    assert (r.kind, str(r.next_hop)) == (RouteKind.TCP, "10.2.0.2:8080")


def test_unknown_address_is_passthrough() -> None:
    r = _route(_mesh(), "192.0.2.7:443")
    assert (r.kind, str(r.next_hop), r.authority) == (RouteKind.PASSTHROUGH, "192.0.2.7:443", None)


def test_other_network_address_is_not_ours() -> None:
    # "far" sits on network other-net; 10.2.0.2 belongs to b1 on the default network only
    r = _route(_mesh(), "10.2.0.2:80", src="far")
    assert r.kind is RouteKind.PASSTHROUGH


def test_route_to_dict_shape() -> None:
    d = _route(_mesh(), "[fd00:2::2]:9000").to_dict()
    assert d["kind"] == "hbone"
    assert d["next_hop"] == "[fd00:2::2]:15008"
    assert d["authority"] == "[fd00:2::2]:9000"
    assert d["expected_identities"] == ["spiffe://cluster.local/ns/default/sa/echo"]
