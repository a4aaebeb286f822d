"""Mesh hostnames where zt takes a destination (zt/state/hostnames.py): outbound as the pod's DNS
would answer (then `route()`), inbound as ztunnel resolves a hostname `:authority`."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from zt.addr import HostPort, SocketAddr
from zt.config import load_document
from zt.errors import ZtError
from zt.state import (
    HostnameUnroutable,
    RouteKind,
    Snapshot,
    UnknownHostname,
    lookup_hostname,
    resolve,
    resolve_inbound,
    route,
)
from zt.state.hostnames import tried_names

ECHO = "echo.default.svc.cluster.local"
HEADLESS = "db.default.svc.cluster.local"


def _w(uid: str, ips: list[str], **extra: Any) -> dict[str, Any]:
    base = {"uid": uid, "name": uid, "namespace": "default", "protocol": "HBONE"}
    return {**base, "workloadIps": ips, **extra}


def _svc(hostname: str, vips: list[str], namespace: str = "default", **extra: Any) -> Any:
    name = hostname.split(".", maxsplit=1)[0]
    return {"name": name, "namespace": namespace, "hostname": hostname, "vips": vips, **extra}


def _mesh() -> Snapshot:
    echo, db = f"default/{ECHO}", f"default/{HEADLESS}"
    return load_document(
        {
            "workloads": [
                _w("src", ["10.1.0.2"]),
                _w("other-ns", ["10.1.0.3"], namespace="prod"),
                _w("far-src", ["10.5.0.2"], network="far"),
                _w("b1", ["fd00:2::2", "10.2.0.2"], services={echo: {80: 8080}}),
                _w("b2", ["10.2.0.3"], services={echo: {80: 9090}}),
                _w("db1", ["10.3.0.1", "fd00:3::1"], services={db: {}}),
                _w("db2", ["10.3.0.2"], services={db: {}}, status="Unhealthy"),
                _w("db3", ["10.3.0.3"], services={db: {}}, network="far"),
            ],
            "services": [
                _svc(ECHO, ["/fd00:96::10", "/10.96.0.10", "far/10.97.0.10"], ports={80: 8080}),
                _svc(HEADLESS, [], ports={5432: 5432}),
                # the same hostname in another namespace: each namespace sees its own first
                _svc(ECHO, ["/10.96.1.10"], namespace="prod", ports={80: 7070}),
                _svc("only-far.default.svc.cluster.local", ["far/10.97.0.11"], ports={1: 1}),
                _svc("lonely.default.svc.cluster.local", [], ports={1: 1}),
            ],
        },
        "test",
    )


def _resolve(name: str, src: str = "src", seed: int = 0) -> SocketAddr:
    snapshot = _mesh()
    host, _, port = name.rpartition(":")
    return resolve(snapshot, HostPort(host, int(port)), snapshot.by_uid[src], seed=seed).destination


@pytest.mark.parametrize(
    ("name", "namespace", "expected"),
    [
        ("echo", "default", ("echo", "echo.default.svc.cluster.local")),
        ("echo.prod", "default", ("echo.prod", "echo.prod.svc.cluster.local")),
        ("echo.prod.svc", "default", ("echo.prod.svc", "echo.prod.svc.cluster.local")),
        ("a.b.c", "default", ("a.b.c",)),
    ],
)
def test_short_names_expand_from_the_namespace(
    name: str, namespace: str, expected: tuple[str, ...]
) -> None:
    # the first names tried; ztunnel's other completions follow (tests/dns/test_names.py)
    assert tuple(tried_names(name, namespace))[: len(expected)] == expected


@pytest.mark.parametrize(
    "name", [f"{ECHO}:80", "echo:80", "echo.default:80", "echo.default.svc:80"]
)
def test_a_service_name_resolves_to_its_ipv4_vip_on_the_sources_network(name: str) -> None:
    # IPv4 first although the v6 VIP is listed first; the VIP of network "far" is not ours
    assert _resolve(name) == SocketAddr.parse("10.96.0.10:80")


def test_the_resolved_vip_routes_like_the_vip_itself() -> None:
    snapshot = _mesh()
    src = snapshot.by_uid["src"]
    via_name = route(_resolve("echo:80"), src, snapshot)
    assert via_name == route(SocketAddr.parse("10.96.0.10:80"), src, snapshot)
    assert via_name.kind is RouteKind.HBONE and via_name.service == f"default/{ECHO}"


def test_the_askers_namespace_wins_for_a_hostname_in_two_namespaces() -> None:
    assert _resolve(f"{ECHO}:80", src="other-ns") == SocketAddr.parse("10.96.1.10:80")
    assert _resolve(f"{ECHO}:80") == SocketAddr.parse("10.96.0.10:80")
    snapshot = _mesh()
    service = lookup_hostname(snapshot, ECHO, "prod")
    assert service is not None and service.namespace == "prod"


def test_another_network_gets_its_own_vip() -> None:
    assert _resolve("echo:80", src="far-src") == SocketAddr.parse("10.97.0.10:80")


def test_a_headless_service_resolves_to_a_healthy_endpoint_on_the_network_port_unchanged() -> None:
    # ztunnel's DNS answers a service without VIPs with its endpoints' addresses
    seen = {_resolve(f"{HEADLESS}:5432", seed=seed) for seed in range(20)}
    assert seen == {SocketAddr.parse("10.3.0.1:5432")}  # db2 is unhealthy, db3 far away
    assert _resolve(f"{HEADLESS}:5432", src="far-src") == SocketAddr.parse("10.3.0.3:5432")
    snapshot = _mesh()
    src = snapshot.by_uid["src"]
    decided = route(_resolve(f"{HEADLESS}:5432"), src, snapshot)
    assert (decided.kind, decided.destination_workload) == (RouteKind.HBONE, "db1")


@pytest.mark.parametrize(
    ("name", "error", "fragment"),
    [
        ("nope:80", UnknownHostname, "tried nope, nope.default.svc.cluster.local"),
        ("echo.default.svc.cluster:80", UnknownHostname, "echo.default.svc.cluster:80"),
        ("only-far:1", HostnameUnroutable, "no VIP on network ''"),
        ("lonely:1", HostnameUnroutable, "no VIP and no healthy endpoint"),
    ],
)
def test_names_that_lead_nowhere_are_typed_errors_naming_the_host(
    name: str, error: type[ZtError], fragment: str
) -> None:
    with pytest.raises(error) as info:
        _resolve(name)
    assert fragment in str(info.value) and name.split(":", maxsplit=1)[0] in str(info.value)
    assert info.value.http_status == 503 and info.value.exit_code == 2


# -- inbound ------------------------------------------------------------------------------------


def _inbound(authority: str, pod: str, reached: str | None) -> SocketAddr:
    snapshot = _mesh()
    host, _, port = authority.rpartition(":")
    ip = ipaddress.ip_address(reached) if reached else None
    return resolve_inbound(
        snapshot, HostPort(host, int(port)), snapshot.by_uid[pod], ip
    ).destination


@pytest.mark.parametrize(
    ("pod", "reached", "expected"),
    [
        ("b1", "10.2.0.2", "10.2.0.2:8080"),  # the address the connection reached
        ("b1", "fd00:2::2", "[fd00:2::2]:8080"),
        ("b1", None, "[fd00:2::2]:8080"),  # unknown: the pod's first address
        ("b1", "10.9.9.9", "[fd00:2::2]:8080"),  # not the pod's: never dialed
        ("b2", "10.2.0.3", "10.2.0.3:9090"),  # the pod's own mapping wins over the service's
        ("src", "10.1.0.2", "10.1.0.2:8080"),  # not an endpoint: the service's mapping (ztunnel)
    ],
)
def test_a_hostname_authority_goes_to_this_pod_at_the_target_port(
    pod: str, reached: str | None, expected: str
) -> None:
    assert _inbound(f"{ECHO}:80", pod, reached) == SocketAddr.parse(expected)


def test_inbound_prefers_the_pods_namespace_and_takes_no_short_names() -> None:
    assert _inbound(f"{ECHO}:80", "other-ns", None) == SocketAddr.parse("10.1.0.3:7070")
    with pytest.raises(UnknownHostname, match="'echo'"):
        _inbound("echo:80", "b1", None)  # a peer sends the service's hostname, not a short form


def test_inbound_service_port_without_target_port_is_unroutable() -> None:
    with pytest.raises(HostnameUnroutable) as info:
        _inbound(f"{ECHO}:81", "b1", "10.2.0.2")
    assert "no target port for port 81" in str(info.value) and info.value.http_status == 503
