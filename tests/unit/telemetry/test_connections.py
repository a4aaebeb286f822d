"""Connection telemetry (zt/telemetry/connections.py): ztunnel's istio_tcp_* label set, response
flags, sockets gauge, byte counters that advance mid-connection, and the access-log record."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zt.addr import SocketAddr
from zt.config.loader import load_text
from zt.identity.errors import NoPeerIdentity, PeerCertificateUntrusted
from zt.proxy.errors import DialFailed
from zt.proxy.splice import Splice
from zt.state.model import Workload
from zt.telemetry.connections import (
    TCP_LABELS,
    ConnectionInfo,
    ConnectionOutcome,
    ConnectionReport,
    ConnectionTelemetry,
    Peer,
    access_record,
    baggage_of,
    failure_flag,
    guess_inbound_service,
    tcp_labels,
)
from zt.telemetry.metrics import Registry

MESH = """
workloads:
- uid: a
  name: frontend-7d9f-abcde
  namespace: shop
  serviceAccount: frontend
  workloadIps: [10.1.0.2]
  protocol: HBONE
  workloadName: frontend
  canonicalName: frontend-svc
  canonicalRevision: v2
  clusterId: east
  locality: {region: eu-west, zone: eu-west-1a, subzone: rack7}
- uid: b
  name: echo-1
  namespace: shop
  serviceAccount: echo
  workloadIps: [10.2.0.2]
  protocol: HBONE
  services: {shop/echo.shop.svc: {80: 8080}}
services:
- name: echo
  namespace: shop
  hostname: echo.shop.svc
  vips: [/10.96.0.1]
  ports: {80: 8080}
"""
SNAPSHOT = load_text(MESH)
A, B = SNAPSHOT.by_uid["a"], SNAPSHOT.by_uid["b"]
SERVICE = SNAPSHOT.service_by_key["shop/echo.shop.svc"]


def _info(direction: str = "outbound", protocol: str = "hbone") -> ConnectionInfo:
    mtls = protocol == "hbone"
    return ConnectionInfo(
        direction=direction,
        src=Peer.of(A, "10.1.0.2:40000", A.identity if mtls else ""),
        dst=Peer.of(B, "10.2.0.2:15008" if mtls else "10.2.0.2:8080", B.identity),
        service=SERVICE.hostname,
        hbone_addr="10.2.0.2:8080" if mtls else "",
        protocol=protocol,
        service_name=SERVICE.name,
        service_namespace=SERVICE.namespace,
    )


def test_labels_are_ztunnels_full_set_in_its_order() -> None:
    labels = tcp_labels(_info())
    assert tuple(labels) == TCP_LABELS and len(TCP_LABELS) == 27
    assert labels == {
        "reporter": "source",
        "source_workload": "frontend",
        "source_canonical_service": "frontend-svc",
        "source_canonical_revision": "v2",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/frontend",
        "source_app": "frontend-svc",  # ztunnel: app is the canonical name
        "source_version": "v2",  # ztunnel: version is the canonical revision
        "source_cluster": "east",
        "destination_service": "echo.shop.svc",
        "destination_service_namespace": "shop",
        "destination_service_name": "echo",
        "destination_workload": "echo-1",  # defaulted from name
        "destination_canonical_service": "echo-1",  # defaulted from the workload name
        "destination_canonical_revision": "latest",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/echo",
        "destination_app": "echo-1",
        "destination_version": "latest",
        "destination_cluster": "unknown",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
        "source_region": "eu-west",
        "source_zone": "eu-west-1a",
        "destination_region": "unknown",
        "destination_zone": "unknown",
    }
    plain = tcp_labels(_info(direction="inbound", protocol="tcp"), "DENY")
    assert plain["reporter"] == "destination" and plain["response_flags"] == "DENY"
    assert plain["source_principal"] == "unknown"  # only mTLS proves a source identity
    assert plain["connection_security_policy"] == "unknown"
    outside = tcp_labels(ConnectionInfo("inbound", Peer("192.0.2.9:1"), Peer("10.2.0.2:80")))
    assert {k: v for k, v in outside.items() if v != "unknown"} == {
        "reporter": "destination",
        "request_protocol": "tcp",
        "response_flags": "-",
    }


def test_counts_opened_closed_failed_and_bytes_at_the_open_labels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = Registry()
    telemetry = ConnectionTelemetry(reg)
    ok = ConnectionReport(telemetry, _info())
    ok.opened()
    with caplog.at_level(logging.INFO, logger="zt.access"):
        ok.closed(sent=10, received=64)
        denied = ConnectionReport(telemetry, _info(direction="inbound"))
        denied.closed(flags="DENY", error="no", policy="shop/deny")
        denied.closed(flags="DENY")  # exactly once
    open_labels = tcp_labels(_info())
    assert reg.value("istio_tcp_connections_opened_total", **open_labels) == 1
    assert reg.value("istio_tcp_connections_closed_total", **open_labels) == 1
    assert reg.value("istio_tcp_received_bytes_total", **open_labels) == 64
    assert reg.value("istio_tcp_sent_bytes_total", **open_labels) == 10
    assert reg.series("istio_tcp_connections_failed_total") == {
        tuple(tcp_labels(_info(direction="inbound"), "DENY").values()): 1.0
    }
    # ztunnel counts every attempt as opened, with the flags of the open ("-")
    assert reg.value("istio_tcp_connections_opened_total", **tcp_labels(denied.info)) == 1
    assert reg.value("istio_tcp_connections_closed_total", **tcp_labels(denied.info, "DENY")) == 1
    assert len([r for r in caplog.records if r.name == "zt.access"]) == 2


def test_failure_flags_are_ztunnels() -> None:
    assert failure_flag(NoPeerIdentity("peer")) == "IDENTITY_ERROR"
    assert failure_flag(PeerCertificateUntrusted("bad chain")) == "TLS_FAILURE"
    assert failure_flag(DialFailed("10.2.0.2:15008", "refused")) == "CONNECT"
    assert failure_flag(OSError("x")) == "CONNECT"


def test_inbound_service_is_guessed_from_the_target_port() -> None:
    assert guess_inbound_service(B, 8080, SNAPSHOT.service_by_key) == SERVICE
    assert guess_inbound_service(B, 9090, SNAPSHOT.service_by_key) is None
    assert guess_inbound_service(A, 8080, SNAPSHOT.service_by_key) is None


def test_access_record_has_ztunnels_fields_order_and_units() -> None:
    outcome = ConnectionOutcome(5, 6, 0.0125, error="peer reset", policy="shop/p")
    text = access_record(_info(), outcome, "text", now=0.0)
    keys = [pair.split("=", 1)[0] for pair in text.removeprefix("connection complete ").split()]
    assert keys[: keys.index("error")] == [
        "ts", "src.addr", "src.workload", "src.namespace", "src.identity", "src.cluster",
        "dst.addr", "dst.hbone_addr", "dst.service", "dst.workload", "dst.namespace",
        "dst.identity", "direction", "bytes_sent", "bytes_recv", "duration", "protocol",
        "response_flags", "policy",
    ]  # fmt: skip
    # outbound: zt sent what the originator sent (6), received what went back to it (5)
    assert "bytes_sent=6 bytes_recv=5 duration=12ms" in text
    assert "dst.addr=10.2.0.2:15008 dst.hbone_addr=10.2.0.2:8080" in text
    assert 'error="peer reset"' in text and "src.workload=frontend-7d9f-abcde" in text
    inbound = json.loads(access_record(_info("inbound", "tcp"), outcome, "json", now=0.0))
    assert (inbound["bytes_sent"], inbound["bytes_recv"], inbound["duration"]) == (5, 6, "12ms")
    assert "src.identity" not in inbound and "dst.identity" not in inbound  # not mTLS
    assert "dst.hbone_addr" not in inbound and inbound["msg"] == "connection complete"


def test_bad_log_format_and_flush_interval() -> None:
    with pytest.raises(ValueError, match="expected 'text' or 'json'"):
        ConnectionTelemetry(Registry(), log_format="xml")
    with pytest.raises(ValueError, match="flush interval: got 0"):
        ConnectionTelemetry(Registry(), flush_interval=0)


async def _pair() -> tuple[socket.socket, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain socket (an app) and the asyncio streams of its peer (zt's side)."""
    app, ours = socket.socketpair()
    app.setblocking(False)
    return app, await asyncio.open_connection(sock=ours)


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop, got = asyncio.get_running_loop(), b""
    while len(got) < n:
        chunk = await loop.sock_recv(sock, n - len(got))
        assert chunk, "closed early"
        got += chunk
    return got


def _scrape(reg: Registry, name: str, labels: dict[str, str]) -> float:
    """The value of one series as the exposition shows it."""
    for family in text_string_to_metric_families(reg.render()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_byte_counters_advance_mid_connection_and_are_exact_at_close() -> None:
    asyncio.run(_byte_counters_advance_mid_connection_and_are_exact_at_close())


async def _byte_counters_advance_mid_connection_and_are_exact_at_close() -> None:
    reg = Registry()
    telemetry = ConnectionTelemetry(reg, flush_interval=0.02)
    info = _info(protocol="tcp")
    labels = tcp_labels(info)
    client, zt_a = await _pair()
    upstream, zt_b = await _pair()
    loop = asyncio.get_running_loop()
    report = ConnectionReport(telemetry, info)
    spliced = Splice()

    async def proxy() -> None:
        with telemetry.socket("source"), report.relaying(spliced.progress):
            result = await spliced.run(zt_a, zt_b)
        report.closed(result.b_to_a, result.a_to_b)

    task = asyncio.create_task(proxy())
    request = b"q" * 300_000
    await loop.sock_sendall(client, request)
    assert await _recv_exactly(upstream, len(request)) == request
    await asyncio.sleep(0.1)  # a few flushes; the connection is still open
    assert _scrape(reg, "istio_tcp_received_bytes_total", labels) == len(request)
    assert _scrape(reg, "istio_tcp_sockets_open", {"reporter": "source"}) == 1
    assert reg.value("istio_tcp_connections_closed_total", **labels) == 0

    await loop.sock_sendall(upstream, b"r" * 1234)
    await _recv_exactly(client, 1234)
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(task, 5)
    assert reg.value("istio_tcp_received_bytes_total", **labels) == len(request)
    assert reg.value("istio_tcp_sent_bytes_total", **labels) == 1234
    assert reg.value("istio_tcp_connections_closed_total", **labels) == 1
    assert _scrape(reg, "istio_tcp_sockets_open", {"reporter": "source"}) == 0
    client.close()
    upstream.close()


def test_a_cancelled_relay_is_closed_with_what_it_moved() -> None:
    asyncio.run(_a_cancelled_relay_is_closed_with_what_it_moved())


async def _a_cancelled_relay_is_closed_with_what_it_moved() -> None:
    reg = Registry()
    info = _info(protocol="tcp")
    report = ConnectionReport(ConnectionTelemetry(reg), info)
    client, zt_a = await _pair()
    upstream, zt_b = await _pair()
    spliced = Splice()

    async def proxy() -> None:
        with report.relaying(spliced.progress):
            await spliced.run(zt_a, zt_b)

    task = asyncio.create_task(proxy())
    await asyncio.get_running_loop().sock_sendall(client, b"x" * 4096)
    await _recv_exactly(upstream, 4096)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reg.value("istio_tcp_received_bytes_total", **tcp_labels(info)) == 4096
    assert reg.value("istio_tcp_connections_failed_total", **tcp_labels(info, "CONNECT")) == 1
    client.close()
    upstream.close()


def test_hbone_sockets_count_once_per_connection_until_it_closes() -> None:
    asyncio.run(_hbone_sockets_count_once_per_connection_until_it_closes())


async def _hbone_sockets_count_once_per_connection_until_it_closes() -> None:
    reg = Registry()
    telemetry = ConnectionTelemetry(reg)
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    connection = object()
    telemetry.hbone_socket(connection, closed)
    telemetry.hbone_socket(connection, closed)  # its second CONNECT
    assert reg.value("istio_tcp_sockets_open", reporter="destination") == 1
    closed.set_result(None)
    await asyncio.sleep(0)
    assert reg.value("istio_tcp_sockets_open", reporter="destination") == 0


def test_peer_of_a_workload_outside_the_mesh() -> None:
    assert Peer.of(None, "192.0.2.1:5", "") == Peer("192.0.2.1:5")
    w: Workload = A
    assert Peer.of(w, str(SocketAddr.parse("10.1.0.2:1"))).cluster == "east"


def test_baggage_names_a_peer_outside_zts_state_and_never_overrides_it() -> None:
    """ztunnel's derived workload: a source it does not know is labelled from the CONNECT's
    `baggage`; a known one from its own state."""
    sent = baggage_of(A).header()
    assert sent == (
        "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=frontend,"
        "service.name=frontend-svc,service.version=v2,cloud.region=eu-west,"
        "cloud.availability_zone=eu-west-1a"
    )
    stranger = Peer.of(None, "192.0.2.1:5", "spiffe://td/ns/shop/sa/x", sent)
    inbound = ConnectionInfo("inbound", stranger, Peer.of(B, "10.2.0.2:15008"), protocol="hbone")
    labels = tcp_labels(inbound)
    assert labels["source_workload"] == "frontend"
    assert labels["source_canonical_service"] == "frontend-svc"
    assert (labels["source_cluster"], labels["source_region"]) == ("east", "eu-west")
    assert labels["source_principal"] == "spiffe://td/ns/shop/sa/x"  # mTLS's, not baggage's
    assert Peer.of(B, "10.2.0.2:1", "", sent).workload_name == B.workload_name


def test_a_200s_baggage_labels_an_unknown_destination_before_the_open() -> None:
    reg = Registry()
    telemetry = ConnectionTelemetry(reg)
    unknown = ConnectionInfo("outbound", Peer.of(A, "10.1.0.2:1"), Peer("192.0.2.9:15008"))
    report = ConnectionReport(telemetry, unknown)
    report.answered("k8s.namespace.name=far,k8s.pod.name=far-1,service.name=far-svc")
    report.opened()
    report.closed()
    assert report.labels["destination_workload"] == "far-1"
    assert report.labels["destination_workload_namespace"] == "far"
    text = telemetry.format(report.info, ConnectionOutcome(0, 0, 0.0), now=0.0)
    assert "dst.workload=far-svc dst.namespace=far" in text
    # a destination zt knows keeps its own names; after the open labels never change
    known = ConnectionReport(telemetry, _info())
    known.answered("k8s.namespace.name=far")
    assert known.labels["destination_workload_namespace"] == "shop"


def test_forwarded_host_picks_the_service_among_the_pods_own() -> None:
    services = SNAPSHOT.service_by_key
    assert guess_inbound_service(B, 9999, services, "echo.shop.svc") == SERVICE
    assert guess_inbound_service(B, 9999, services, "ECHO.shop.svc") == SERVICE
    assert guess_inbound_service(A, 9999, services, "echo.shop.svc") is None  # not A's service
    assert guess_inbound_service(B, 8080, services, "other.svc") == SERVICE  # port, as before
