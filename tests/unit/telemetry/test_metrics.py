"""The metrics engine (zt/telemetry/metrics.py): exposition, names, build info, scrape paths, and
worker processes sharing one multiprocess directory (real processes, without the proxy)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import zt
from tests.unit.telemetry import shared_metrics_node as node
from zt.proxy.accept import AcceptMetrics
from zt.state.loopguard import METRIC as LOOP_GUARD_METRIC
from zt.state.loopguard import METRIC_HELP as LOOP_GUARD_HELP
from zt.telemetry import http
from zt.telemetry.connections import ConnectionTelemetry
from zt.telemetry.endpoints import metrics_handler
from zt.telemetry.http import Request, Response
from zt.telemetry.metrics import CONTENT_TYPE, MetricsModeError, Registry

# What zt's exposition named these families before prometheus_client rendered it (TYPE lines and
# sample names alike): dashboards and the lab's checks query exactly these.
NAMES_BEFORE = {
    "istio_tcp_connections_opened_total": "counter",
    "istio_tcp_connections_closed_total": "counter",
    "istio_tcp_received_bytes_total": "counter",
    "istio_tcp_sent_bytes_total": "counter",
    "zt_accept_refused_total": "counter",
    "zt_connections_open": "gauge",
    "zt_handshake_timeouts_total": "counter",
    "zt_connection_errors_total": "counter",
    "zt_accept_errors_total": "counter",
    "zt_loop_exceptions_total": "counter",
    "zt_loop_guard_refused_total": "counter",
    "zt_endpoint_metrics_connections": "gauge",
    "zt_endpoint_metrics_refused_total": "counter",
    "zt_endpoint_metrics_timed_out_total": "counter",
}
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)[{ ]", re.M)


def _node_registry() -> Registry:
    """A registry with the families of the node's real call sites, each with a sample."""
    reg = Registry()
    ConnectionTelemetry(reg)
    accept = AcceptMetrics(reg)
    accept.refused("pod-a", "max_connections")
    accept.handshake_timeout("pod-a")
    accept.error("pod-a", "tls")
    accept.accept_error("pod-a", 24)
    accept.loop_exception("OSError")
    reg.gauge("zt_connections_open", "Connections open on a pod's listeners", ("pod",)).set(
        2, {"pod": "pod-a"}
    )
    reg.counter(LOOP_GUARD_METRIC, LOOP_GUARD_HELP, ("path",)).inc(labels={"path": "hbone"})
    stats = {"metrics": http.ServerStats(open=1, refused_total=2, timed_out_total=3)}
    reg.add_collector(lambda: http.stats_samples(stats))
    return reg


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_exposition_keeps_every_family_name_and_kind() -> None:
    text = _node_registry().render()
    types = dict(TYPE_LINE.findall(text))
    assert {name: types.get(name) for name in NAMES_BEFORE} == NAMES_BEFORE
    sampled = set(SAMPLE_LINE.findall(text))
    # every sample carries its family's exposed name: no `_created`, no renamed counter
    assert sampled <= set(types), sampled - set(types)
    assert not [name for name in sampled if name.endswith("_created")]
    assert sampled >= set(NAMES_BEFORE) - {n for n in NAMES_BEFORE if n.startswith("istio_tcp")}
    samples = _samples(text)  # and prometheus_client's own parser reads all of it
    assert samples[("zt_endpoint_metrics_refused_total", ())] == 2
    assert samples[("zt_accept_errors_total", (("errno", "EMFILE"), ("pod", "pod-a")))] == 1


def test_build_info_and_process_metrics() -> None:
    text = Registry().render()
    samples = _samples(text)
    assert samples[("istio_build", (("component", "ztunnel"), ("tag", zt.__version__)))] == 1
    assert "# TYPE istio_build gauge" in text
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0


def _get(handler_path: str, reg: Registry) -> tuple[int, bytes, str]:
    request = Request("GET", handler_path, {}, {})

    async def scrape() -> Response:
        return await metrics_handler(reg)(request)

    response = asyncio.run(scrape())
    return response.status, response.body, response.content_type


def test_metrics_and_stats_prometheus_serve_the_same_exposition() -> None:
    reg = Registry()
    reg.counter("zt_x_total", "x").inc(3)
    status, metrics, content_type = _get("/metrics", reg)
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert content_type == CONTENT_TYPE
    status, stats, _ = _get("/stats/prometheus", reg)
    assert status == 200
    strip = re.compile(rb"^process_.*\n", re.M)  # CPU seconds move between two scrapes
    assert strip.sub(b"", stats) == strip.sub(b"", metrics)
    assert _samples(stats.decode())[("zt_x_total", ())] == 3
    status, body, _ = _get("/stats", reg)
    assert (status, body) == (404, b"not found: try /metrics or /stats/prometheus\n")


def test_a_follower_needs_the_leaders_directory(tmp_path: Path) -> None:
    with pytest.raises(MetricsModeError, match=r"--metrics-dir: got .*/gone, expected the leader"):
        Registry.follower(tmp_path / "gone")


def test_worker_processes_share_one_exposition_and_a_dead_ones_counters_stay(
    tmp_path: Path,
) -> None:
    """A leader and two followers (real processes) count into one directory; the leader's render
    sums them; follower 1 is SIGKILLed and retired: its counters stay, its gauges leave. A
    directory a killed leader left behind is removed when the next one starts."""
    killed = subprocess.Popen(["true"])
    killed.wait()
    stale = tmp_path / f"zt-metrics-{killed.pid}-left"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", node.MODULE, "leader", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    leader, dead, alive = doc["pids"]
    opened = (node.OPENED, (("reporter", "destination"),))
    open_now = (node.OPEN_NOW, (("pod", "a"),))
    before, after = _samples(doc["alive"]), _samples(doc["after"])
    # leader 1 + follower 10 + follower 100; the stray process (inherited the variable, never
    # switched) counted 99999 privately: not here
    assert before[opened] == after[opened] == 111
    # an add_collector counter: published by each process, summed; the leader's source reset
    # (1000, then 400) adds 400 instead of going back
    assert (before[(node.REVOKED, ())], after[(node.REVOKED, ())]) == (6000, 6400)
    for worker in (0, 1, 2):
        key = (node.ACCEPTED, (("listener", "hbone"), ("worker", str(worker))))
        assert before[key] == after[key] == worker + 1
    assert (before[open_now], after[open_now]) == (2 + 3 + 4, 2 + 4)  # livesum
    assert before[("istio_build", (("component", "ztunnel"), ("tag", zt.__version__)))] == 1
    assert f"counter_{dead}.db" in doc["files_alive"]
    # the dead follower's counters folded into one file, its live gauges gone
    assert f"counter_{dead}.db" not in doc["files_after"]
    assert f"gauge_livesum_{dead}.db" not in doc["files_after"]
    assert {"counter_retired.db", f"counter_{alive}.db", f"counter_{leader}.db"} <= set(
        doc["files_after"]
    )
    assert all(
        said.startswith("private refused: Registry(): got a private") for said in doc["said"]
    )
    assert doc["removed"] and doc["env_after"] is None
    assert list(tmp_path.iterdir()) == []
