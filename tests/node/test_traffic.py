"""The node tier, traffic: two nodes, two pods each, real capture and real HBONE between them.

These tests only send traffic (no policy change, no daemon killed), on the lab the node modules
share (tests/node/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, handed_on, hbone_status, identity, metric
from zt.lab import demo, demodriver, logs, mesh, runner, wire
from zt.lab.apps import exchange

pytestmark = pytest.mark.root

OPENED = "istio_tcp_connections_opened_total"
CLOSED = "istio_tcp_connections_closed_total"
RECEIVED = "istio_tcp_received_bytes_total"


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def test_cross_node_echo_identities_on_both_sides_and_metrics(lab: Lab) -> None:
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    labels = {"source_workload": "pod1-1", "destination_workload": "pod2-1"}
    before = {n: lab.metrics(n) for n in ("node1", "node2")}
    offsets = lab.offsets()
    payload = b"cross-node " + bytes(range(256)) * 1024  # 256 KiB + marker, every byte value

    ex = exchange(a.netns, str(b.ipv4), mesh.APP_PORT, payload)

    assert ex.error == "" and ex.received == payload
    out = lab.wait_record("node1", offsets["node1"], direction="outbound", src__addr=ex.local)
    assert (out.get("protocol"), out.get("src.identity"), out.get("dst.identity")) == (
        "hbone", identity(a), identity(b)
    )  # fmt: skip
    assert out.get("dst.addr") == f"{b.ipv4}:15008"  # the L4 hop; the authority is the app's
    assert out.get("dst.hbone_addr") == f"{b.ipv4}:{mesh.APP_PORT}"
    inb = lab.wait_record(
        "node2", offsets["node2"], direction="inbound", dst__hbone_addr=f"{b.ipv4}:{mesh.APP_PORT}"
    )
    assert (inb.get("src.identity"), inb.get("dst.identity")) == (identity(a), identity(b))
    assert inb.count("bytes_recv") == len(payload) == inb.count("bytes_sent")
    after = {n: lab.metrics(n) for n in ("node1", "node2")}
    for node, reporter in (("node1", "source"), ("node2", "destination")):
        for name in (OPENED, CLOSED):
            grew = metric(after[node], name, reporter=reporter, **labels) - metric(
                before[node], name, reporter=reporter, **labels
            )
            assert grew == 1, f"{node} {name}: +{grew}"
        got = metric(after[node], RECEIVED, reporter=reporter, **labels) - metric(
            before[node], RECEIVED, reporter=reporter, **labels
        )
        assert got == len(payload), f"{node} received bytes +{got}"
    assert metric(after["node2"], OPENED, source_principal=identity(a), **labels) >= 1


@pytest.mark.parametrize(
    "scenario",
    [
        "cross-node HBONE (IPv6)",
        "same node",
        "service VIP",
        "TCP workload",
        "passthrough",
        "DENY policy (HBONE)",
        "DENY policy (plaintext)",
    ],
)
def test_scenario_as_the_demo_judges_it(lab: Lab, scenario: str) -> None:
    """App bytes, both access logs (identities, protocol, flags, policy) for each path."""
    sc = next(s for s in demo.scenarios(lab.plan) if s.name == scenario)
    row = demodriver.Driver(lab.state, lab.plan, b"ZT-NODE-TEST-").run(sc)
    assert row.ok, f"{row.scenario}: {row.path}: {row.detail}"


def test_service_vip_v6_maps_the_port_to_an_endpoint_of_the_service(lab: Lab) -> None:
    offsets = lab.offsets()
    ex = exchange(lab.pod("pod1-1").netns, mesh.SERVICE_VIP6, mesh.SERVICE_PORT, b"vip6" * 100)
    assert ex.echoed, ex.error
    out = lab.wait_record("node1", offsets["node1"], direction="outbound", src__addr=ex.local)
    endpoints = {f"[{p.ipv6}]:{mesh.APP_PORT}" for p in lab.plan.pods_of("node2")}
    assert out.get("dst.hbone_addr") in endpoints and out.get("dst.service") == mesh.SERVICE_HOST


def test_deny_policy_answers_401_to_hbone_and_400_to_a_wrong_authority(lab: Lab) -> None:
    a, b, b2 = lab.pod("pod1-1"), lab.pod("pod2-1"), lab.pod("pod2-2")
    offset = logs.size(lab.log("node2"))
    assert hbone_status(lab, a, b, str(b.ipv4), mesh.DENIED_PORT) == 401
    rec = lab.wait_record("node2", offset, direction="inbound", response_flags="DENY")
    assert rec.get("policy") == "lab/deny-port-9090" and rec.get("src.identity") == identity(a)
    assert hbone_status(lab, a, b, str(b.ipv4), mesh.APP_PORT) == 200
    assert hbone_status(lab, a, b, str(b2.ipv4), mesh.APP_PORT) == 400  # b2's IP on b's :15008


def test_hostname_authority_reaches_the_pod_at_the_target_port(lab: Lab) -> None:
    """`:authority <service hostname>:<service port>` (as ztunnel accepts): the node resolves it to
    the pod the connection reached, at the target port; names and ports it cannot map are 503."""
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    offset = logs.size(lab.log("node2"))
    assert hbone_status(lab, a, b, mesh.SERVICE_HOST, mesh.SERVICE_PORT) == 200
    rec = lab.wait_record(
        "node2", offset, direction="inbound", dst__hbone_addr=f"{mesh.SERVICE_HOST}:80"
    )
    assert (rec.get("src.identity"), rec.get("dst.service")) == (identity(a), mesh.SERVICE_HOST)
    assert hbone_status(lab, a, b, "nope.lab.svc.cluster.local", mesh.SERVICE_PORT) == 503
    assert hbone_status(lab, a, b, mesh.SERVICE_HOST, mesh.SERVICE_PORT + 1) == 503


def test_node_link_carries_only_tls_to_15008(lab: Lab) -> None:
    marker = b"ZT-WIRE-MARKER-7f3a-"
    node = lab.plan.nodes[0]
    payload = marker * 3000
    with wire.sniffing(node.netns, node.link) as segments:
        for src, dst in (("pod1-1", "pod2-1"), ("pod1-1", "pod2-2"), ("pod2-2", "pod1-1")):
            for ip in (lab.pod(dst).ipv4, lab.pod(dst).ipv6):
                ex = exchange(lab.pod(src).netns, str(ip), mesh.APP_PORT, payload)
                assert ex.echoed, f"{src} -> {ip}: {ex.error}"
    report = wire.analyse(segments, demo.mesh_ips(lab.plan), marker)
    assert report.ok, report.summary()
    assert not any(marker in s.payload for s in segments)
    assert report.tls_records > 0 and report.packets > 6 * len(payload) // 65536


def test_node_endpoints_live_in_the_node_netns(lab: Lab) -> None:
    """Readiness :15021, metrics :15020 (with zt's capture counters), admin 127.0.0.1:15000."""
    node = lab.plan.node("node2")
    assert runner.http_get(node.netns, runner.READY_PORT, "/healthz/ready")[0] == 200
    text = lab.metrics("node2")
    assert "zt_capture_" in text and metric(text, "zt_pods") == 2
    # logging never blocks: what stderr could not take is counted (nothing here, but exported)
    assert (
        "# TYPE zt_log_dropped_total counter" in text and metric(text, "zt_log_dropped_total") == 0
    )
    status, body = runner.http_get(node.netns, runner.ADMIN_PORT, "/config_dump")
    dump = json.loads(body)
    assert status == 200 and dump["node"] == "node2"
    assert sorted(p["uid"] for p in dump["pods"]) == ["lab/pod2-1", "lab/pod2-2"]
    with pytest.raises(OSError):  # admin is loopback-only: not reachable on the node's link IP
        runner.http_get(lab.plan.nodes[0].netns, runner.ADMIN_PORT, "/config_dump",
                        host=str(node.link_ipv4), timeout=1.0)  # fmt: skip
