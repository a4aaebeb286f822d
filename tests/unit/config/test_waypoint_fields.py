"""The waypoint fields (ztunnel's GatewayAddress, ApplicationTunnel): workloads' and services'
`waypoint`, workloads' `applicationTunnel`; both destination forms, the dump round trip, and the
refusals (each naming the field, the value and what was expected)."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from zt.config.dump import document
from zt.config.loader import load_text
from zt.errors import ConfigError
from zt.state.model import (
    ApplicationTunnel,
    GatewayAddress,
    NamespacedHostname,
    NetworkAddress,
    TunnelProtocol,
)

MESH = """
workloads:
- uid: wp
  name: waypoint-0
  workloadIps: [10.0.0.3]
  protocol: HBONE
  services: {default/waypoint.default.svc.cluster.local: {15008: 15008}}
  applicationTunnel: {protocol: PROXY, port: 15088}
- uid: server
  name: server
  workloadIps: [10.0.0.2]
  protocol: HBONE
  services: {default/server.default.svc.cluster.local: {80: 8080}}
  waypoint: {destination: {network: "", address: 10.0.0.3}, hboneMtlsPort: 15008}
- uid: plain
  name: plain
  workloadIps: [10.0.0.4]
  waypoint: {destination: {address: 10.10.0.2}}
  applicationTunnel: {protocol: NONE}
services:
- name: waypoint
  hostname: waypoint.default.svc.cluster.local
  vips: [10.10.0.2]
  ports: {15008: 15008}
- name: server
  hostname: server.default.svc.cluster.local
  vips: [10.10.0.1]
  ports: {80: 8080}
  waypoint:
    destination: {namespace: default, hostname: Waypoint.default.svc.cluster.local}
    hboneMtlsPort: 15009
"""

V4 = ipaddress.IPv4Address


def test_both_destination_forms_reach_the_state() -> None:
    snapshot = load_text(MESH)
    wp, server, plain = (snapshot.by_uid[u] for u in ("wp", "server", "plain"))
    assert wp.waypoint is None
    assert wp.application_tunnel == ApplicationTunnel(TunnelProtocol.PROXY, 15088)
    assert server.waypoint == GatewayAddress(NetworkAddress("", V4("10.0.0.3")), 15008)
    assert server.application_tunnel is None
    # network and hboneMtlsPort default to "" and 15008; an unset port stays None (target port)
    assert plain.waypoint == GatewayAddress(NetworkAddress("", V4("10.10.0.2")), 15008)
    assert plain.application_tunnel == ApplicationTunnel(TunnelProtocol.NONE, None)
    svc = snapshot.service_by_key["default/server.default.svc.cluster.local"]
    # the hostname is lowercased as a service's own, so it names the service
    expected = NamespacedHostname("default", "waypoint.default.svc.cluster.local")
    assert svc.waypoint == GatewayAddress(expected, 15009)
    assert snapshot.service_by_key[expected.key].name == "waypoint"


def test_dump_writes_them_back_and_reloads_to_the_same_state() -> None:
    snapshot = load_text(MESH)
    doc = document(snapshot, with_identity=False)
    server = doc["workloads"][1]  # type: ignore[index]
    assert server["waypoint"] == {
        "destination": {"network": "", "address": "10.0.0.3"},
        "hboneMtlsPort": 15008,
    }
    assert doc["workloads"][0]["applicationTunnel"] == {"protocol": "PROXY", "port": 15088}  # type: ignore[index]
    again = load_text(yaml.safe_dump(doc))
    assert again.workloads == snapshot.workloads
    assert again.services == snapshot.services


def _load_with(workload_yaml: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(MESH + f"- name: extra\n  hostname: extra.default\n  {workload_yaml}\n")
    return caught.value


@pytest.mark.parametrize(
    ("field", "path", "expected"),
    [
        (
            "waypoint: {destination: {address: 10.0.0.3, hostname: a.b}}",
            "services[2].waypoint.destination",
            "{address: <ip>, network: <network>}",
        ),
        ("waypoint: {destination: {}}", "services[2].waypoint.destination", "or {namespace"),
        (
            "waypoint: {destination: {network: n1}}",
            "services[2].waypoint.destination",
            "an address beside the network",
        ),
        (
            "waypoint: {destination: {hostname: wp.default}}",
            "services[2].waypoint.destination",
            "both namespace and hostname",
        ),
        ("waypoint: {destination: {address: 10.0.0.300}}", "destination.address", "IPv4"),
        (
            "waypoint: {destination: {address: 10.0.0.3}, hboneMtlsPort: 0}",
            "services[2].waypoint.hboneMtlsPort",
            "greater than or equal to 1",
        ),
        ("waypoint: {destination: {address: 10.0.0.3}, port: 1}", "waypoint.port", "no such"),
        # cross-checks: the waypoint must exist
        (
            "waypoint: {destination: {address: 10.0.0.99}}",
            "services[2].waypoint.destination.address",
            "the address of a workload or a service VIP on network ''",
        ),
        (
            "waypoint: {destination: {network: other, address: 10.0.0.3}}",
            "services[2].waypoint.destination.address",
            "on network 'other'",
        ),
        (
            "waypoint: {destination: {namespace: x, hostname: waypoint.default.svc.cluster.local}}",
            "services[2].waypoint.destination",
            "the namespace/hostname of a service",
        ),
    ],
)
def test_bad_waypoints_name_field_value_and_expectation(
    field: str, path: str, expected: str
) -> None:
    message = str(_load_with(field))
    assert path in message and expected in message, message


@pytest.mark.parametrize(
    ("field", "path", "expected"),
    [
        ("applicationTunnel: {protocol: HBONE}", "applicationTunnel.protocol", "'NONE' or 'PROXY'"),
        ("applicationTunnel: {port: 15088}", "applicationTunnel.protocol", "required"),
        ("applicationTunnel: {protocol: PROXY, port: 70000}", "applicationTunnel.port", "65535"),
    ],
)
def test_bad_application_tunnels_are_refused(field: str, path: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(f"workloads:\n- uid: a\n  name: a\n  {field}\n")
    message = str(caught.value)
    assert f"workloads[0].{path}" in message and expected in message, message
