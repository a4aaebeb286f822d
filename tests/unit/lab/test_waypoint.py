"""The lab's waypoint, pure parts: its plan and mesh entries, the Envoy config's Istio shape, the
web app and its client's response parsing (the running Envoy: tests/lab/test_lab.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from zt.addr import SocketAddr, parse_ip
from zt.config import load_document
from zt.lab import mesh, topology, web
from zt.lab import waypointconfig as wpconfig
from zt.lab.envoy import TlsFiles
from zt.lab.waypointconfig import Backend
from zt.state.authz import Connection, authorize

TLS = TlsFiles(Path("/w/wp.crt"), Path("/w/wp.key"), Path("/w/wp.roots"))
WEB = Backend(
    "web.lab.svc.cluster.local", ("10.96.0.20:80", "[fd00:96::20]:80"), ("10.2.0.2:8081",)
)


def _listener(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    found = [lis for lis in cfg["static_resources"]["listeners"] if lis["name"] == name]
    assert len(found) == 1, name
    out: dict[str, Any] = found[0]
    return out


def _cluster(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
    out: dict[str, Any] = found
    return out


def test_the_waypoint_is_a_pod_of_the_first_node_outside_the_served_pods() -> None:
    lab = topology.plan("w", waypoint=True)
    wp = lab.waypoint
    assert wp is not None and wp.node == "node1" and wp not in lab.pods
    assert (str(wp.ipv4), str(wp.ipv6), wp.netns) == ("10.1.0.250", "fd00:1::fa", "zt-w-wp")
    assert wp.netns in lab.namespaces
    assert topology.plan("w").waypoint is None


def test_mesh_points_the_web_service_at_the_waypoint_and_admits_only_it_to_the_web_port() -> None:
    lab = topology.plan("w", waypoint=True)
    snap = load_document(mesh.mesh_config(lab), "lab")
    wp = snap.by_uid["lab/waypoint"]
    assert wp.netns is None and wp.identity == mesh.waypoint_identity()  # never served by zt
    (web_svc,) = [s for s in snap.services if s.hostname == mesh.WEB_HOST]
    assert web_svc.waypoint is not None
    assert str(web_svc.waypoint.destination.address) == "10.1.0.250"  # type: ignore[union-attr]
    pod = mesh.web_pods(lab)[0]
    client = "spiffe://cluster.local/ns/lab/sa/sa-pod1-1"

    def allowed(src_id: str, port: int) -> bool:
        dst = SocketAddr(pod.ipv4, port)
        return authorize(Connection(parse_ip("10.1.0.2"), dst, src_id), snap).allowed

    assert allowed(mesh.waypoint_identity(), mesh.WEB_APP_PORT)
    assert not allowed(client, mesh.WEB_APP_PORT)
    assert allowed(client, mesh.APP_PORT)  # the pods' other ports stay open to everyone


def test_envoy_config_has_istios_waypoint_shape() -> None:
    cfg = wpconfig.config(TLS, "cluster.local", (WEB,))
    term = _listener(cfg, "connect_terminate")
    assert term["address"]["socket_address"]["port_value"] == 15008
    tls = term["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"] == (
        "/w/wp.crt"
    )
    hcm = term["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http2_protocol_options"] == {"allow_connect": True}
    state = hcm["http_filters"][0]["typed_config"]["on_request_headers"][0]
    assert state["object_key"] == "envoy.filters.listener.original_dst.local_ip"
    assert "%REQ(:AUTHORITY)%" in str(state["format_string"])
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert (
        route["match"] == {"connect_matcher": {}} and route["route"]["cluster"] == "main_internal"
    )

    main = _listener(cfg, "main_internal")
    (chain,) = main["filter_chains"]
    assert chain["filter_chain_match"]["destination_port"] == 80
    assert {r["address_prefix"] for r in chain["filter_chain_match"]["prefix_ranges"]} == {
        "10.96.0.20",
        "fd00:96::20",
    }
    rbac = chain["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["rules"]
    assert rbac["action"] == "DENY"
    (policy,) = rbac["policies"].values()
    assert policy["permissions"] == [{"url_path": {"path": {"prefix": "/admin"}}}]

    svc = _cluster(cfg, WEB.cluster)
    (ep,) = svc["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["envoy_internal_address"]["server_listener_name"] == (
        "connect_originate"
    )
    assert ep["metadata"]["filter_metadata"]["envoy.filters.listener.original_dst"] == {
        "local": "10.2.0.2:8081"
    }
    orig = _listener(cfg, "connect_originate")
    proxy = orig["filter_chains"][0]["filters"][0]["typed_config"]
    assert proxy["tunneling_config"] == {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}
    up = _cluster(cfg, "connect_originate")
    assert up["type"] == "ORIGINAL_DST"
    assert up["original_dst_lb_config"] == {"upstream_port_override": 15008}


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", (200, "hello", True)),
        (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\n\r\nRBAC", (403, "RBAC", False)),
        (b"HTTP/1.1 200 OK\r\n\r\nno length", (200, "no length", False)),
        (b"", (0, "", False)),
    ],
)
def test_a_response_is_whole_once_content_length_bytes_arrived(
    data: bytes, want: tuple[int, str, bool]
) -> None:
    assert web._parse(data) == want


def test_the_web_app_answers_every_path_with_200_then_closes() -> None:
    stop = threading.Event()
    server = threading.Thread(target=web.serve, args=(18181, stop))
    server.start()
    try:
        for _ in range(50):  # bounded: the server binds within a moment
            got = web._get("127.0.0.1", 18181, "/admin", timeout=5.0)
            if got.status:
                break
            threading.Event().wait(0.05)
        assert (got.status, got.body, got.error) == (200, "zt lab web: GET /admin\n", "")
    finally:
        stop.set()
        server.join(timeout=5)
