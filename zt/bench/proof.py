"""What shows that each mode of the node bench carried its bytes the way the mode claims."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from zt.bench import loadgen
from zt.bench.benchlab import Bench
from zt.capture import read_status
from zt.errors import ZtError
from zt.lab import runner


class BenchFailed(ZtError):
    reason = "bench_failed"


@dataclass(frozen=True)
class Carried:
    """What shows that a mode's bytes went the way the mode claims."""

    mode: str
    ok: bool
    evidence: str


def _zt_received(proc: runner.NodeProcess) -> float:
    status, body = runner.http_get(proc.netns, runner.METRICS_PORT, "/metrics", timeout=5)
    if status != 200:
        raise BenchFailed(f"{proc.node}: /metrics answered {status}")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("istio_tcp_received_bytes_total{")
    )


def counters(bench: Bench) -> dict[str, float]:
    """The proxies' byte counters each proof compares: read before and after the run."""
    out: dict[str, float] = {}
    node1, node2 = bench.envoys["node1"].stats(), bench.envoys["node2"].stats()
    out["envoy:out_tunnels"] = node1.get("cluster.hbone_out.upstream_rq_total", 0)
    out["envoy:out_tls_bytes"] = node1.get("cluster.hbone_out.upstream_cx_tx_bytes_total", 0)
    out["envoy:in_connects"] = node2.get("http.hbone_in.downstream_rq_total", 0)
    out["envoy:in_app_bytes"] = node2.get("cluster.inbound_app.upstream_cx_tx_bytes_total", 0)
    if bench.capture is not None:  # the capture that holds the Envoy pods
        got = bench.capture.counters()
        for name in ("connect_redirect", "sockopt_orig", "lookup_hbone"):
            out[f"envoy:capture_{name}"] = got.get(name, 0)
    for mode, procs in bench.zt_nodes.items():
        out[f"{mode}:in_app_bytes"] = _zt_received(procs[1])
    return out


def prove(bench: Bench, before: dict[str, float], after: dict[str, float]) -> list[Carried]:
    """Each mode carried its uploads the way it claims: zt's and Envoy's counters on the
    receiving node grew by at least the bytes uploaded; direct's server saw the client pod's own
    address and no capture holds its pods."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    out = []
    for mode, route in bench.routes.items():
        up = bench.uploaded.get(mode, 0)
        if mode == "envoy":
            got = delta["envoy:in_app_bytes"]
            tunnels = delta["envoy:out_tunnels"]
            captured = (
                delta["envoy:capture_connect_redirect"],
                delta["envoy:capture_sockopt_orig"],
                delta["envoy:capture_lookup_hbone"],
            )
            # the tunnels share pooled HTTP/2 connections: one SYN to :15008 carries many
            ok = got >= up > 0 and tunnels > 0 and min(captured[:2]) >= tunnels >= captured[2] > 0
            evidence = (
                f"node2 Envoy wrote {got:.0f} B to the app for {up} B uploaded;"
                f" {tunnels:.0f} CONNECTs out of node1, {delta['envoy:in_connects']:.0f} into"
                f" node2; capture: {captured[0]:.0f} app connects redirected to :15001,"
                f" {captured[1]:.0f} SO_ORIGINAL_DST answered, {captured[2]:.0f} HBONE"
                " connections' SYNs steered to Envoy's :15008 (sk_lookup)"
            )
        elif mode == "direct":
            seen = loadgen.peers(route.dst_netns).get(route.src_ip, 0)
            enrolled = _enrolled(bench)
            free = route.src_netns not in enrolled and route.dst_netns not in enrolled
            ok = seen >= up > 0 and free
            evidence = (
                f"the server got {seen} B from {route.src_ip} (the client pod itself) for {up} B"
                f" uploaded; no capture holds its pods: {free}"
            )
        else:
            got = delta[f"{mode}:in_app_bytes"]
            ok = got >= up > 0
            node = bench.zt_nodes[mode][1].node
            evidence = (
                f"{node}'s istio_tcp_received_bytes_total grew {got:.0f} B for {up} B uploaded"
            )
        out.append(Carried(mode, ok, evidence))
    return out


def _enrolled(bench: Bench) -> set[str]:
    """Every netns some capture of this lab enrolled: this process's and every zt node's."""
    netns: set[str] = set()
    if bench.capture is not None:
        netns |= {Path(p.netns).name for p in bench.capture.status().pods}
    for procs in bench.zt_nodes.values():
        for proc in procs:
            with contextlib.suppress(ZtError, OSError):
                netns |= {Path(p.netns).name for p in read_status(proc.pin_dir).pods}
    return netns
