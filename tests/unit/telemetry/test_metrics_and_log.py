from __future__ import annotations

import json
import logging

import pytest

from zt.telemetry.connections import (
    ConnectionInfo,
    ConnectionOutcome,
    ConnectionTelemetry,
    Peer,
    access_record,
)
from zt.telemetry.metrics import Registry

INFO = ConnectionInfo(
    direction="inbound",
    src=Peer(
        "10.1.0.2:40000", "pod-a1", "default", "spiffe://cluster.local/ns/default/sa/frontend"
    ),
    dst=Peer("10.2.0.2:8080", "pod-b1", "default", "spiffe://cluster.local/ns/default/sa/echo"),
    service="echo.default.svc.cluster.local",
    hbone_addr="10.2.0.2:15008",
    protocol="hbone",
)


def test_render_exposition_format() -> None:
    reg = Registry()
    c = reg.counter("zt_things_total", "Things", ("kind",))
    c.inc(labels={"kind": 'a"b\\c\nd'})
    c.inc(2, {"kind": "plain"})
    g = reg.gauge("zt_open", "Open now")
    g.set(3)
    g.dec()
    reg.add_collector(lambda: [("zt_bpf_verdict_total", "From BPF", "counter", 7.0)])
    text = reg.render()
    assert "# TYPE zt_things_total counter" in text
    assert 'zt_things_total{kind="a\\"b\\\\c\\nd"} 1' in text
    assert 'zt_things_total{kind="plain"} 2' in text
    assert "zt_open 2" in text
    assert "zt_bpf_verdict_total 7" in text
    assert text.endswith("\n")


def test_counter_refuses_to_go_down_and_redeclaration_must_match() -> None:
    reg = Registry()
    c = reg.counter("x_total", "x", ("a",))
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        reg.counter("x_total", "x", ("b",))


def test_connection_metrics_labels(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()
    telemetry = ConnectionTelemetry(reg)
    telemetry.opened(INFO)
    with caplog.at_level(logging.INFO, logger="zt.access"):
        telemetry.closed(INFO, ConnectionOutcome(bytes_sent=10, bytes_received=64, duration=0.5))
    labels = {
        "reporter": "destination",
        "source_workload": "pod-a1",
        "source_workload_namespace": "default",
        "source_principal": "spiffe://cluster.local/ns/default/sa/frontend",
        "destination_workload": "pod-b1",
        "destination_workload_namespace": "default",
        "destination_principal": "spiffe://cluster.local/ns/default/sa/echo",
        "destination_service": "echo.default.svc.cluster.local",
        "request_protocol": "tcp",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    assert reg.value("istio_tcp_connections_opened_total", **labels) == 1
    assert reg.value("istio_tcp_connections_closed_total", **labels) == 1
    assert reg.value("istio_tcp_received_bytes_total", **labels) == 64
    assert reg.value("istio_tcp_sent_bytes_total", **labels) == 10
    [record] = [r for r in caplog.records if r.name == "zt.access"]
    assert "src.identity=spiffe://cluster.local/ns/default/sa/frontend" in record.getMessage()


def test_denied_connection_counts_open_and_close_with_flag() -> None:
    reg = Registry()
    ConnectionTelemetry(reg).closed(
        INFO, ConnectionOutcome(0, 0, 0.001, response_flags="DENY", policy="default/deny-all")
    )
    [(key, value)] = reg.series("istio_tcp_connections_opened_total").items()
    assert value == 1 and "DENY" in key


def test_access_record_text_and_json() -> None:
    outcome = ConnectionOutcome(5, 6, 0.0125, error="peer reset", policy="default/p")
    text = access_record(INFO, outcome, "text", now=0.0)
    assert text.startswith("connection complete ts=1970-01-01T00:00:00.000Z direction=inbound")
    assert 'error="peer reset"' in text
    assert "bytes_sent=5 bytes_recv=6 duration_ms=12.5" in text
    doc = json.loads(access_record(INFO, outcome, "json", now=0.0))
    assert doc["src.workload"] == "pod-a1" and doc["dst.hbone_addr"] == "10.2.0.2:15008"
    assert doc["policy"] == "default/p"


def test_bad_log_format() -> None:
    with pytest.raises(ValueError, match="expected 'text' or 'json'"):
        ConnectionTelemetry(Registry(), log_format="xml")
