"""`zt lab up --prometheus`: Debian's Prometheus scrapes every lab node; after known traffic (HBONE
exchanges, policy denials, a refused config reload, one connection held open) the queries of
Istio's ztunnel dashboard and every query of docs/grafana/zt.json answer, and answer right.
`zt lab down` stops Prometheus and its relay and leaves nothing."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import zt
from cli import lab_cmd
from tests.lab.test_lab import _name, assert_nothing_left
from zt.lab import apps, control, mesh
from zt.lab import prometheus as prom
from zt.lab.state import LabState, load

pytestmark = pytest.mark.root

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "zt.json"
WINDOW = "[1m]"  # for Grafana's $__rate_interval: the lab's whole life fits in it
SIZE = 10_000  # bytes each exchange sends (and gets echoed back)
ROUNDS = 3  # exchanges in the second phase
NODES = ("ztunnel-node1", "ztunnel-node2")  # the `pod` label zt.lab.prometheus gives each node

# The Process and Network rows of Istio's ztunnel dashboard, verbatim, from istio/istio
# manifests/addons/dashboards/ztunnel-dashboard.gen.json (generated from ztunnel.libsonnet and
# lib/queries.libsonnet there); only `[$__rate_interval]` is replaced by WINDOW. Left out: Memory and
# CPU Usage (cAdvisor's container_* series: the lab has no containers), DNS Request (zt has no DNS
# proxy), XDS and Workload Manager (zt has no xDS client). zt.json's CPU and RSS panels cover them.
ISTIO = {
    "Ztunnel Versions": ['sum(istio_build{component="ztunnel"}) by (tag)'],
    "Connections": [
        'sum by (pod) (\n  rate(\n    istio_tcp_connections_opened_total{pod=~"ztunnel-.*"}\n'
        "  [$__rate_interval])\n)",
        '-sum by (pod) (\n  rate(\n    istio_tcp_connections_closed_total{pod=~"ztunnel-.*"}\n'
        "  [$__rate_interval])\n)",
    ],
    "Bytes Transmitted": [
        'sum by (pod) (\n  rate(\n    istio_tcp_sent_bytes_total{pod=~"ztunnel-.*"}\n'
        "  [$__rate_interval])\n)",
        'sum by (pod) (\n  rate(\n    istio_tcp_received_bytes_total{pod=~"ztunnel-.*"}\n'
        "  [$__rate_interval])\n)",
    ],
}


@dataclass(frozen=True)
class Lab:
    name: str
    url: str
    held: socket.socket  # an HBONE connection open while the queries run


Samples = list[prom.Sample]


def run(url: str, expr: str) -> Samples:
    return prom.query(url, expr.replace("[$__rate_interval]", WINDOW))


def by_pod(samples: Samples) -> dict[str, float]:
    return {s.labels["pod"]: s.value for s in samples}


def wait_for(url: str, expr: str, ok: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Poll a query until its answer satisfies ok (a scrape every 0.5 s: a few polls)."""
    deadline = time.monotonic() + timeout
    got = run(url, expr)
    while not ok(got):
        assert time.monotonic() < deadline, f"{expr!r} still answers {got}"
        time.sleep(0.25)
        got = run(url, expr)
    return got


def exchange_ok(src: str, dst: str) -> None:
    ex = apps.exchange(src, dst, mesh.APP_PORT, b"m" * SIZE)
    assert ex.echoed, ex.error


def denied(src: str, dst: str) -> None:
    ex = apps.exchange(src, dst, mesh.DENIED_PORT, b"d" * 100)
    assert not ex.echoed and ex.received == b""


def swap_config(path: Path, text: str) -> None:
    path.with_suffix(".new").write_text(text)
    path.with_suffix(".new").rename(path)


def phase_one(url: str, state: LabState, src: str, dst: str) -> None:
    """Make every series exist before phase two (a counter's first sample counts no increase):
    one exchange, one denial, one refused config reload on both nodes."""
    exchange_ok(src, dst)
    denied(src, dst)
    swap_config(state.config, "workloads: [{uid: 1}]\n")
    wait_for(url, 'sum by (pod) (istio_tcp_connections_closed_total{response_flags="-"})',
             lambda s: by_pod(s) == dict.fromkeys(NODES, 1.0))  # fmt: skip
    wait_for(url, "count by (pod) (zt_config_reload_errors_total)", lambda s: len(s) == 2)


def phase_two(url: str, state: LabState, src: str, dst: str, good: str) -> socket.socket:
    """What the rates and totals are about: ROUNDS exchanges, one more denial, the good config
    back, one connection left open (returned); until Prometheus has scraped all of it."""
    swap_config(state.config, good)
    for _ in range(ROUNDS):
        exchange_ok(src, dst)
    denied(src, dst)
    held = apps.connect_only(src, dst, mesh.APP_PORT)
    held.sendall(b"held")
    assert held.recv(16) == b"held"
    wait_for(url, 'sum by (pod) (istio_tcp_connections_closed_total{response_flags="-"})',
             lambda s: by_pod(s) == dict.fromkeys(NODES, 1.0 + ROUNDS))  # fmt: skip
    # opened: as ztunnel, counted when a connection opens, before a denial flags it
    wait_for(url, "sum by (pod) (istio_tcp_connections_opened_total)",
             lambda s: by_pod(s) == dict.fromkeys(NODES, 2.0 + ROUNDS + 2))  # fmt: skip
    wait_for(url, "min by (pod) (zt_config_last_reload_success)",
             lambda s: by_pod(s) == dict.fromkeys(NODES, 1.0))  # fmt: skip
    return held


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    name = _name("tp")
    cli = CliRunner()
    up = cli.invoke(lab_cmd.app, ["up", "--name", name, "--prometheus"])
    held: socket.socket | None = None
    try:
        assert up.exit_code == 0, up.output
        state = load(name)
        url = state.prometheus
        proc = state.proc(prom.ROLE)
        assert proc is not None and state.proc(prom.RELAY_ROLE) is not None
        assert control.status(name)["prometheus"] == {"url": url, "pid": proc.pid, "log": proc.log}
        assert f"prometheus: {url}  pid=" in up.stdout
        src, dst = state.plan.pods[0], state.plan.pods_of("node2")[0]  # HBONE across two nodes
        good = state.config.read_text()
        phase_one(url, state, src.netns, str(dst.ipv4))
        held = phase_two(url, state, src.netns, str(dst.ipv4), good)
        yield Lab(name, url, held)
    finally:
        if held is not None:
            held.close()
        pids = tuple(p.pid for p in load(name).procs) if up.exit_code == 0 else ()
        down = cli.invoke(lab_cmd.app, ["down", "--name", name])
        assert down.exit_code == 0, down.output
        assert_nothing_left(name, pids)  # Prometheus and its relay among the pids
        if up.exit_code == 0:
            with pytest.raises(ConnectionRefusedError):  # the relay's port is closed
                socket.create_connection(("127.0.0.1", int(url.rpartition(":")[2])), 1.0)


def test_the_istio_ztunnel_dashboard_queries_answer_right(lab: Lab) -> None:
    (versions,) = [run(lab.url, q) for q in ISTIO["Ztunnel Versions"]]
    assert [(s.labels, s.value) for s in versions] == [({"tag": zt.__version__}, 2.0)]
    opened, closed = (by_pod(run(lab.url, q)) for q in ISTIO["Connections"])
    sent, received = (by_pod(run(lab.url, q)) for q in ISTIO["Bytes Transmitted"])
    # both nodes carried phase 2 (node1 as source, node2 as destination reporter): the rates of
    # series that existed before it are positive; closed connections are drawn downwards
    for pod in NODES:
        assert opened[pod] > 0 and closed[pod] < 0 and sent[pod] > 0 and received[pod] > 0
    assert set(opened) == set(closed) == set(sent) == set(received) == set(NODES)
    # the totals behind those rates hold every app byte, both ways, on both nodes, the held
    # connection's 4 bytes included (counted while it lives: within a second and a scrape)
    least = (1 + ROUNDS) * SIZE + 4
    for family in ("received", "sent"):
        wait_for(lab.url, f'sum by (pod) (istio_tcp_{family}_bytes_total{{response_flags="-"}})',
                 lambda s: len(s) == 2 and all(v >= least for v in by_pod(s).values()))  # fmt: skip


def panels() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of docs/grafana/zt.json."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["refId"], t["expr"])
        for p in dash["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def test_the_zt_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39 and dash["uid"] == "zt-node-proxy"
    (variable,) = dash["templating"]["list"]
    assert (variable["type"], variable["query"], variable["name"]) == (
        "datasource", "prometheus", "datasource",
    )  # fmt: skip
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_every_zt_dashboard_query_answers_right(lab: Lab) -> None:
    answers = {(title, ref): run(lab.url, expr) for title, ref, expr in panels()}
    assert [key for key, samples in answers.items() if not samples] == []

    def one(title: str, ref: str = "A") -> dict[str, float]:
        return by_pod(answers[title, ref])

    flows = answers["Connections by source -> destination workload", "A"]
    assert [(s.labels, s.value > 0) for s in flows] == [
        ({"source_workload": "pod1-1", "destination_workload": "pod2-1"}, True)
    ]
    failed = {
        (s.labels["pod"], s.labels["response_flags"]): s.value
        for s in answers["Failed connections by response flag", "A"]
    }
    assert failed[NODES[1], "DENY"] > 0  # the second denial, at the destination node
    assert {flags for _, flags in failed} == {"DENY"}
    closed_flags = {
        (s.labels["reporter"], s.labels["response_flags"])
        for s in answers["Closed connections by response flag", "A"]
    }
    assert {("destination", "-"), ("destination", "DENY")} <= closed_flags
    sockets = {
        (s.labels["pod"], s.labels["reporter"]): s.value for s in answers["Open sockets", "A"]
    }
    assert sockets[NODES[0], "source"] >= 1 and sockets[NODES[1], "destination"] >= 1  # held
    for ref in ("A", "B"):
        flow = answers["Bytes by source -> destination workload", ref]
        assert [(s.labels["source_workload"], s.value > 0) for s in flow] == [("pod1-1", True)]
    assert [(s.labels, s.value) for s in answers["Versions", "A"]] == [
        ({"tag": zt.__version__}, 2.0)
    ]
    refused = {
        (s.labels["pod"], s.labels["reason"]): s.value for s in answers["Config reloads", "A"]
    }
    assert refused == {(pod, "config_invalid"): 1.0 for pod in NODES}
    assert one("Config reloads", "B") == dict.fromkeys(NODES, 1.0)  # the good file is back
    assert one("Captured connections", "A")[NODES[0]] > 0  # pod1-1's connects, redirected
    assert one("Capture errors") == dict.fromkeys(NODES, 0.0)
    assert all(v > 0 for v in one("CPU").values())
    assert all(v > 10e6 for v in one("Memory (RSS)").values())  # a Python process: > 10 MB


def test_a_prometheus_that_fails_to_start_fails_the_up_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = _name("tq")
    monkeypatch.setattr(prom, "SCRAPE_INTERVAL", "1x")  # a config Prometheus itself refuses
    with pytest.raises(control.LabUpFailed) as failed:
        control.up(control.UpOptions(name=name, prometheus=True))
    assert failed.value.step == "prometheus", failed.value
    assert "prometheus exited" in str(failed.value)
    assert "not a valid duration string" in str(failed.value)  # Prometheus's own words
    assert len(failed.value.pids) == 2  # Prometheus and its relay: the first lab processes
    assert_nothing_left(name, failed.value.pids)
