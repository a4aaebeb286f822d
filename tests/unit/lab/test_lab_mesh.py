from __future__ import annotations

import ipaddress

from zt.addr import SocketAddr
from zt.config import load_document
from zt.lab import mesh, topology
from zt.state import Connection, RouteKind, authorize, route


def test_lab_mesh_is_valid_and_routes_as_the_demo_expects() -> None:
    lab = topology.plan("demo", nodes=2, pods=2)
    snap = load_document(mesh.mesh_config(lab), "lab")
    assert len(snap.workloads) == 4
    src = snap.by_uid["lab/pod1-1"]
    vip = route(SocketAddr.parse("10.96.0.10:80"), src, snap)
    assert vip.kind is RouteKind.HBONE and vip.authority is not None
    assert vip.authority.port == 8080 and str(vip.authority.ip).startswith("10.2.0.")
    assert route(SocketAddr.parse("10.1.0.3:8080"), src, snap).kind is RouteKind.TCP
    assert route(SocketAddr.parse("10.255.0.200:80"), src, snap).kind is RouteKind.PASSTHROUGH
    denied = Connection(ipaddress.ip_address("10.1.0.2"), SocketAddr.parse("10.2.0.2:9090"))
    assert authorize(denied, snap).policy == "lab/deny-port-9090"
