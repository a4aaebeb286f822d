"""Outbound routing through waypoints (zt/state/route.py, zt/state/waypoint.py), mirroring
ztunnel's build_request cases (src/proxy/outbound.rs: build_request_source_waypoint,
_destination_waypoint, _destination_waypoint_mismatch_ip, _destination_svc_waypoint) and its
fetch_waypoint resolution (src/state.rs)."""

from __future__ import annotations

from typing import Any

import pytest

from zt.addr import SocketAddr
from zt.config import load_document
from zt.state import Route, RouteKind, Snapshot, route

WP_SVC = "default/waypoint.default.svc.cluster.local"
SERVER_SVC = "default/server.default.svc.cluster.local"
WP_ID = "spiffe://cluster.local/ns/default/sa/waypoint"
BY_IP = {"destination": {"address": "10.0.0.3"}}
BY_VIP = {"destination": {"address": "10.10.0.2"}}
BY_NAME = {
    "destination": {"namespace": "default", "hostname": "waypoint.default.svc.cluster.local"}
}


def _w(uid: str, ips: list[str], **extra: Any) -> dict[str, Any]:
    base = {"uid": uid, "name": uid, "protocol": "HBONE", "serviceAccount": uid}
    return {**base, "workloadIps": ips, **extra}


def _mesh(
    server_wp: dict[str, Any] | None = None,
    service_wp: dict[str, Any] | None = None,
    waypoint_extra: dict[str, Any] | None = None,
) -> Snapshot:
    return load_document(_mesh_doc(server_wp, service_wp, waypoint_extra), "test")


def _mesh_doc(
    server_wp: dict[str, Any] | None = None,
    service_wp: dict[str, Any] | None = None,
    waypoint_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    server: dict[str, Any] = {"services": {SERVER_SVC: {80: 8080}}}
    if server_wp is not None:
        server["waypoint"] = server_wp
    svc: dict[str, Any] = {
        "name": "server",
        "hostname": "server.default.svc.cluster.local",
        "vips": ["10.10.0.1"],
        "ports": {80: 8080},
    }
    if service_wp is not None:
        svc["waypoint"] = service_wp
    doc = {
        "workloads": [
            _w("client", ["10.0.0.1", "fd00::1"]),
            _w("server", ["10.0.0.2", "fd00::2"], **server),
            _w(
                "waypoint",
                ["10.0.0.3", "fd00::3"],
                services={WP_SVC: {15008: 15008}},
                **(waypoint_extra or {}),
            ),
        ],
        "services": [
            svc,
            {
                "name": "waypoint",
                "hostname": "waypoint.default.svc.cluster.local",
                "vips": ["10.10.0.2"],
                "ports": {15008: 15008},
                "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/waypoint-svc"],
            },
        ],
    }
    return doc


def _route(snapshot: Snapshot, dst: str, src: str = "client") -> Route:
    return route(SocketAddr.parse(dst), snapshot.by_uid[src], snapshot)


def _seen(r: Route) -> tuple[RouteKind, str, str]:
    return r.kind, str(r.next_hop), str(r.authority)


@pytest.mark.parametrize(
    ("gateway", "name"), [(BY_IP, "waypoint"), (BY_VIP, WP_SVC), (BY_NAME, WP_SVC)]
)
def test_workload_waypoint_takes_pod_addressed_traffic(gateway: dict[str, Any], name: str) -> None:
    """build_request_destination_waypoint: HBONE to the waypoint, the pod address untranslated
    as the authority, the waypoint's identity (and its service's SANs) expected."""
    r = _route(_mesh(server_wp=gateway), "10.0.0.2:80")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.3:15008", "10.0.0.2:80")
    assert r.expected_identities[0] == WP_ID
    assert r.destination_workload == "waypoint" and r.waypoint == name
    assert r.service is None
    via_service = name == WP_SVC
    assert ("spiffe://cluster.local/ns/default/sa/waypoint-svc" in r.expected_identities) is (
        via_service
    )
    assert r.to_dict()["waypoint"] == name


def test_service_waypoint_takes_vip_traffic_with_the_vip_as_authority() -> None:
    """build_request_destination_svc_waypoint: VIP:port, not translated to the target port."""
    r = _route(_mesh(service_wp=BY_IP), "10.10.0.1:80")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.3:15008", "10.10.0.1:80")
    assert (r.service, r.waypoint, r.destination_workload) == (SERVER_SVC, "waypoint", "waypoint")


def test_service_waypoint_is_used_even_for_a_port_the_service_lacks() -> None:
    """ztunnel sends service-addressed traffic to the waypoint before looking at ports."""
    r = _route(_mesh(service_wp=BY_VIP), "10.10.0.1:9999")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.3:15008", "10.10.0.1:9999")


def test_service_addressed_traffic_ignores_the_endpoints_workload_waypoint() -> None:
    """A VIP without a service waypoint goes to the endpoint directly, even if the endpoint has
    a workload waypoint (ztunnel: `service.is_none()` guards the workload waypoint)."""
    r = _route(_mesh(server_wp=BY_IP), "10.10.0.1:80")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.2:15008", "10.0.0.2:8080")
    assert r.waypoint is None


def test_a_source_with_a_waypoint_does_not_use_it() -> None:
    """build_request_source_waypoint: only the destination's waypoint counts."""
    snapshot = _mesh(server_wp=BY_IP)
    r = _route(snapshot, "10.0.0.1:80", src="server")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.1:15008", "10.0.0.1:80")


@pytest.mark.parametrize("gateway", [BY_IP, BY_VIP, BY_NAME])
def test_the_waypoint_itself_goes_direct(gateway: dict[str, Any]) -> None:
    """check_from_waypoint: the waypoint's own connections to its targets are not sent back to
    it (else they would loop)."""
    snapshot = _mesh(server_wp=gateway, service_wp=gateway)
    to_pod = _route(snapshot, "10.0.0.2:80", src="waypoint")
    assert _seen(to_pod) == (RouteKind.HBONE, "10.0.0.2:15008", "10.0.0.2:80")
    to_vip = _route(snapshot, "10.10.0.1:80", src="waypoint")
    assert _seen(to_vip) == (RouteKind.HBONE, "10.0.0.2:15008", "10.0.0.2:8080")
    assert to_pod.waypoint is None and to_vip.waypoint is None


def test_an_address_names_the_hop_family_a_hostname_follows_the_destination() -> None:
    """build_request_destination_waypoint_mismatch_ip: a waypoint named by an IPv4 address is
    reached over IPv4 even for an IPv6 destination; by hostname, the destination's family."""
    by_ip = _route(_mesh(server_wp=BY_IP), "[fd00::2]:80")
    assert _seen(by_ip) == (RouteKind.HBONE, "10.0.0.3:15008", "[fd00::2]:80")
    by_name = _route(_mesh(server_wp=BY_NAME), "[fd00::2]:80")
    assert _seen(by_name) == (RouteKind.HBONE, "[fd00::3]:15008", "[fd00::2]:80")


def test_hbone_mtls_port_is_the_next_hop_port() -> None:
    gateway = {**BY_IP, "hboneMtlsPort": 15009}
    r = _route(_mesh(server_wp=gateway), "10.0.0.2:80")
    assert str(r.next_hop) == "10.0.0.3:15009"


def test_a_waypoint_service_endpoint_without_the_port_needs_an_application_tunnel() -> None:
    """fetch_waypoint by service: the service must map the hboneMtlsPort, or the endpoint takes
    tunnels on an applicationTunnel port of its own."""
    gateway = {**BY_NAME, "hboneMtlsPort": 15010}
    refused = _route(_mesh(server_wp=gateway), "10.0.0.2:80")
    assert refused.kind is RouteKind.REFUSED
    assert "no healthy endpoint for 15010" in refused.reason
    tunnel = {"applicationTunnel": {"protocol": "PROXY", "port": 15088}}
    r = _route(_mesh(server_wp=gateway, waypoint_extra=tunnel), "10.0.0.2:80")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.3:15010", "10.0.0.2:80")


def test_an_unhealthy_waypoint_pod_is_not_picked() -> None:
    snapshot = _mesh(server_wp=BY_VIP, waypoint_extra={"status": "Unhealthy"})
    r = _route(snapshot, "10.0.0.2:80")
    assert r.kind is RouteKind.REFUSED and "waypoint" in r.reason


def test_the_waypoint_services_load_balancer_decides_the_hop() -> None:
    """fetch_waypoint -> find_upstream_from_service -> load_balance: the waypoint service's own
    health policy applies to the hop (ALLOW_ALL picks an unhealthy waypoint pod)."""
    doc = _mesh_doc(server_wp=BY_VIP, waypoint_extra={"status": "Unhealthy"})
    assert _route(load_document(doc, "test"), "10.0.0.2:80").kind is RouteKind.REFUSED
    doc["services"][1]["loadBalancer"] = {"healthPolicy": "ALLOW_ALL"}
    r = _route(load_document(doc, "test"), "10.0.0.2:80")
    assert _seen(r) == (RouteKind.HBONE, "10.0.0.3:15008", "10.0.0.2:80")
