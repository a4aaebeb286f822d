"""Inbound decisions for waypoints (zt/state/inbound.py): ztunnel's test_build_inbound_request
and test_find_inbound_upstream table (src/proxy/inbound.rs), row for row, plus the hostname and
from_gateway cases."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address as ip
from typing import Any

import pytest

from zt.addr import HostPort, SocketAddr, parse_destination
from zt.config import load_document
from zt.state import Snapshot, resolve_inbound
from zt.state.inbound import Delivery, check_authority, delivery, from_gateway, inbound_upstream
from zt.state.model import ApplicationTunnel, Service, TunnelProtocol

CLIENT_POD_IP = "10.0.0.1"
SERVER_POD_IP = "10.0.0.2"
SERVER_SVC_IP = "10.10.0.1"
SERVER_POD_HOSTNAME = "server.default.svc.cluster.local"
WAYPOINT_POD_IP = "10.0.0.3"
WAYPOINT_SVC_IP = "10.10.0.2"
SERVER_PORT, TARGET_PORT, PROXY_PORT = 80, 8080, 15088
APP_TUNNEL_PROXY = {"protocol": "PROXY", "port": PROXY_PORT}

# (attached to: "workload" | "service" | None, the waypoint's address, its application tunnel)
Waypoint = tuple[str | None, str, dict[str, Any] | None]
NONE: Waypoint = (None, "", None)


def _state(waypoint: Waypoint) -> Snapshot:
    """ztunnel's test_state: services `waypoint` and `server` (80 -> 8080), each with its pod as
    endpoint; the server's waypoint attached to its workload or its service."""
    attached, address, tunnel = waypoint
    gateway = {"destination": {"address": address}, "hboneMtlsPort": 15008}

    def svc(name: str, vip: str, wp: bool) -> dict[str, Any]:
        out = {"name": name, "hostname": f"{name}.default.svc.cluster.local", "vips": [vip]}
        return {**out, "ports": {80: 8080}, **({"waypoint": gateway} if wp else {})}

    def pod(name: str, ip: str, **extra: Any) -> dict[str, Any]:
        base = {"uid": f"cluster1//v1/Pod/default/{name}", "name": f"workload-{name}"}
        return {
            **base,
            "serviceAccount": f"sa-{name}",
            "workloadIps": [ip],
            "protocol": "HBONE",
            **extra,
        }

    waypoint_pod = pod(
        "waypoint", WAYPOINT_POD_IP, services={"default/waypoint.default.svc.cluster.local": {}}
    )
    if tunnel is not None:
        waypoint_pod["applicationTunnel"] = tunnel
    server_pod = pod("server", SERVER_POD_IP, services={f"default/{SERVER_POD_HOSTNAME}": {}})
    if attached == "workload":
        server_pod["waypoint"] = gateway
    doc = {
        "workloads": [waypoint_pod, pod("client", CLIENT_POD_IP), server_pod],
        "services": [
            svc("waypoint", WAYPOINT_SVC_IP, False),
            svc("server", SERVER_SVC_IP, attached == "service"),
        ],
    }
    return load_document(doc, "test")


def _decide(waypoint: Waypoint, connection_dst: str, authority: str) -> Delivery | str:
    """What flows.admit does for an HBONE arrival: resolve a hostname, then inbound_upstream."""
    snapshot = _state(waypoint)
    reached = SocketAddr.parse(f"{connection_dst}:15008").ip
    pod = snapshot.workload_at("", reached)
    assert pod is not None
    dst = parse_destination(authority)
    target, service = dst, None
    if isinstance(dst, HostPort):
        resolved = resolve_inbound(snapshot, dst, pod, reached)
        target, service = resolved.destination, resolved.service
    assert isinstance(target, SocketAddr)
    return inbound_upstream(snapshot, pod, reached, target, authority=dst, service=service)


WL_POD: Waypoint = ("workload", WAYPOINT_POD_IP, None)
WL_VIP: Waypoint = ("workload", WAYPOINT_SVC_IP, None)
WL_VIP_TUNNEL: Waypoint = ("workload", WAYPOINT_SVC_IP, APP_TUNNEL_PROXY)
SVC_POD: Waypoint = ("service", WAYPOINT_POD_IP, None)
SVC_VIP: Waypoint = ("service", WAYPOINT_SVC_IP, None)
SVC_VIP_TUNNEL: Waypoint = ("service", WAYPOINT_SVC_IP, APP_TUNNEL_PROXY)


@pytest.mark.parametrize(
    ("waypoint", "connection_dst", "hbone_dst", "port", "want"),
    [
        # regular inbound
        (NONE, SERVER_POD_IP, SERVER_POD_IP, TARGET_PORT, (SERVER_POD_IP, TARGET_PORT, None)),
        (NONE, SERVER_POD_IP, SERVER_POD_HOSTNAME, SERVER_PORT, (SERVER_POD_IP, TARGET_PORT, None)),
        # the sandwich, to-workload traffic
        (WL_POD, WAYPOINT_POD_IP, SERVER_POD_IP, TARGET_PORT, (WAYPOINT_POD_IP, TARGET_PORT, None)),
        (WL_VIP, WAYPOINT_POD_IP, SERVER_POD_IP, TARGET_PORT, (WAYPOINT_POD_IP, TARGET_PORT, None)),
        (
            WL_VIP_TUNNEL, WAYPOINT_POD_IP, SERVER_POD_IP, TARGET_PORT,
            (WAYPOINT_POD_IP, PROXY_PORT, SERVER_POD_IP),
        ),
        # the sandwich, to-service traffic
        (SVC_POD, WAYPOINT_POD_IP, SERVER_SVC_IP, TARGET_PORT, (WAYPOINT_POD_IP, TARGET_PORT, None)),
        (SVC_VIP, WAYPOINT_POD_IP, SERVER_SVC_IP, TARGET_PORT, (WAYPOINT_POD_IP, TARGET_PORT, None)),
        (
            SVC_VIP_TUNNEL, WAYPOINT_POD_IP, SERVER_SVC_IP, TARGET_PORT,
            (WAYPOINT_POD_IP, PROXY_PORT, SERVER_SVC_IP),
        ),
        # a hostname to the waypoint: PROXY names the service's VIP and the service port
        (
            SVC_VIP_TUNNEL, WAYPOINT_POD_IP, SERVER_POD_HOSTNAME, SERVER_PORT,
            (WAYPOINT_POD_IP, PROXY_PORT, SERVER_SVC_IP),
        ),
        # refused: wrong or missing attachments
        (NONE, SERVER_POD_IP, CLIENT_POD_IP, TARGET_PORT, None),  # to server ip mismatch
        (NONE, WAYPOINT_POD_IP, CLIENT_POD_IP, TARGET_PORT, None),  # to waypoint, no attachment
        (SVC_POD, WAYPOINT_POD_IP, SERVER_POD_IP, TARGET_PORT, None),  # workload, svc-attached
        (WL_POD, WAYPOINT_POD_IP, SERVER_SVC_IP, TARGET_PORT, None),  # service, pod-attached
    ],
)  # fmt: skip
def test_build_inbound_request(
    waypoint: Waypoint,
    connection_dst: str,
    hbone_dst: str,
    port: int,
    want: tuple[str, int, str | None] | None,
) -> None:
    got = _decide(waypoint, connection_dst, f"{hbone_dst}:{port}")
    if want is None:
        assert isinstance(got, str) and "is not an address of pod" in got
        return
    ip, dial_port, proxy_ip = want
    assert isinstance(got, Delivery), got
    assert got.dial == SocketAddr.parse(f"{ip}:{dial_port}")
    if proxy_ip is None:
        assert got.proxy_target is None
    else:
        assert got.protocol is TunnelProtocol.PROXY
        assert got.proxy_target == SocketAddr.parse(f"{proxy_ip}:{port}")


def test_an_application_tunnel_accepts_any_authority() -> None:
    """validate_destination: with an application tunnel the PROXY header carries the target
    and the application decides; nothing is checked (ztunnel's "we don't validate this")."""
    got = _decide(("workload", WAYPOINT_POD_IP, APP_TUNNEL_PROXY), WAYPOINT_POD_IP, "192.0.2.7:9")
    assert isinstance(got, Delivery)
    assert got.dial == SocketAddr.parse(f"{WAYPOINT_POD_IP}:{PROXY_PORT}")
    assert got.proxy_target == SocketAddr.parse("192.0.2.7:9")
    # ztunnel's LOCALHOST_APP_TUNNEL default: the PROXY tunnel itself goes to the pod's loopback
    assert got.connect_to == SocketAddr.parse(f"127.0.0.1:{PROXY_PORT}")


def test_a_none_tunnel_moves_the_port_and_sends_no_header() -> None:
    tunnel = {"protocol": "NONE", "port": 15099}
    got = _decide(("workload", WAYPOINT_POD_IP, tunnel), WAYPOINT_POD_IP, f"{SERVER_POD_IP}:80")
    assert got == Delivery(SocketAddr.parse(f"{WAYPOINT_POD_IP}:15099"), TunnelProtocol.NONE)
    assert isinstance(got, Delivery) and got.connect_to == got.dial  # no PROXY: the pod's address


def test_a_tunnel_without_port_keeps_the_target_port() -> None:
    tunnel = {"protocol": "PROXY"}
    got = _decide(("workload", WAYPOINT_POD_IP, tunnel), WAYPOINT_POD_IP, f"{SERVER_POD_IP}:80")
    assert isinstance(got, Delivery) and got.dial == SocketAddr.parse(f"{WAYPOINT_POD_IP}:80")


@pytest.mark.parametrize(
    ("header", "network", "expected"),
    [
        (None, "", False),  # no header: same network
        ("", "", False),
        ("net-a", "net-a", False),
        ("NET-A", "net-a", False),  # eq_ignore_ascii_case
        ("net-b", "net-a", True),
        ("net-b", "", True),
    ],
)
def test_from_gateway_is_a_different_forwarded_network(
    header: str | None, network: str, expected: bool
) -> None:
    assert from_gateway(header, network) is expected


def test_an_entry_edited_in_place_is_still_the_waypoint() -> None:
    """The node holds the pod's workload as it started; after an edit of any other field the
    sandwich check still recognises it (by uid, not by the whole record)."""
    snapshot = _state(SVC_VIP)
    old = snapshot.workload_at("", SocketAddr.parse(f"{WAYPOINT_POD_IP}:1").ip)
    assert old is not None
    edited = dataclasses.replace(old, canonical_revision="v2")
    target = SocketAddr.parse(f"{SERVER_SVC_IP}:80")
    assert check_authority(snapshot, edited, target) is None


def test_a_proxy_header_names_the_last_of_equally_good_vips() -> None:
    """ztunnel picks the VIP with Iterator::max_by_key, which returns the last of equal maxima."""
    service = Service(
        "s", "default", "s.default.svc", (("", ip("10.10.0.1")), ("", ip("10.10.0.9"))), {80: 80}
    )
    pod = _state(NONE).by_uid["cluster1//v1/Pod/default/server"]
    got = delivery(
        dataclasses.replace(pod, application_tunnel=ApplicationTunnel(TunnelProtocol.PROXY)),
        SocketAddr.parse(f"{SERVER_POD_IP}:80"),
        HostPort("s.default.svc", 80),
        service,
    )
    assert got.proxy_target == SocketAddr.parse("10.10.0.9:80")
