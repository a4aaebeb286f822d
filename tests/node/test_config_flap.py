"""Config flap with real capture: the mesh file rewritten half-written, empty, then whole, within
1 s, five times over (plus a half file and an empty file each held long enough to be read), while
every pod probes every HBONE pod throughout. No pod is ever uncaptured, and every pod is served at
the end.

Observables of capture, sampled all along:
- the lab's DENY policy on :9090: a captured destination refuses a connection to its :9090 (zt
  applies the policy), an uncaptured one would let its echo server answer. An answer = fail open;
- each node's pinned `zt_pods` map (bpftool): the enrolled pods (outbound capture is keyed on it).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.node.lab import Lab, handed_on, identity, metric
from zt.lab import mesh, runner
from zt.lab.apps import exchange
from zt.lab.topology import PodPlan
from zt.timescale import scaled

pytestmark = pytest.mark.root

ROUNDS = 5
PROBE_TIMEOUT = 2.0


@dataclass
class Watch:
    """What the probe thread saw while the file flapped."""

    probes: int = 0
    answered_9090: list[str] = field(default_factory=list)  # fail-open sightings
    refused: Counter[str] = field(default_factory=Counter)  # how 9090 was refused
    map_samples: int = 0
    enrolled_seen: dict[str, set[int]] = field(default_factory=dict)


def _enrolled(lab: Lab, node: str) -> int:
    pins = runner.pin_dir(lab.plan, lab.plan.node(node))
    done = subprocess.run(
        ["bpftool", "-j", "map", "dump", "pinned", str(pins / "zt_pods")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return len(json.loads(done.stdout or "[]"))


def _probe_loop(lab: Lab, hbone: list[PodPlan], stop: threading.Event, watch: Watch) -> None:
    deadline = time.monotonic() + scaled(120.0)  # bounded in time as well as by `stop`
    while not stop.is_set() and time.monotonic() < deadline:
        for src in lab.plan.pods:
            for dst in hbone:
                if dst == src:
                    continue
                ex = exchange(src.netns, str(dst.ipv4), mesh.DENIED_PORT, b"flap",
                              timeout=PROBE_TIMEOUT)  # fmt: skip
                watch.probes += 1
                if ex.echoed:
                    watch.answered_9090.append(f"{src.name} -> {dst.name}:9090 at {time.time()}")
                else:
                    watch.refused[ex.error.split(":")[0]] += 1
        for node in ("node1", "node2"):
            watch.enrolled_seen.setdefault(node, set()).add(_enrolled(lab, node))
        watch.map_samples += 1


def _write_in_place(lab: Lab, text: str) -> None:
    """As a truncate-then-write editor does: open(O_TRUNC), write, close."""
    with open(lab.state.config, "w") as f:
        f.write(text)


def _reordered(lab: Lab) -> str:
    """The lab's mesh with policies and services first: a truncated copy that still parses is
    then a smaller mesh that keeps the DENY on :9090 (the probe's observable)."""
    doc = yaml.safe_load(lab.state.config.read_text())
    order = {k: doc[k] for k in ("policies", "services", "workloads")}
    return yaml.safe_dump(order, sort_keys=False)


def _valid_half(whole: str) -> str:
    """The longest line-boundary prefix that is a valid mesh with only the first workload."""
    lines = whole.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("workloads:"))
    second = [i for i, line in enumerate(lines) if line.startswith("- uid:") and i > start][1]
    return "".join(lines[:second])


def _ready_body(lab: Lab, node: str) -> tuple[int, str]:
    return runner.http_get(lab.plan.node(node).netns, runner.READY_PORT, "/healthz/ready")


def _wait(predicate: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def test_config_flap_never_uncaptures_a_pod_and_every_pod_is_served_at_the_end(lab: Lab) -> None:
    started = time.monotonic()
    plain = mesh.tcp_pod(lab.plan)
    hbone = [p for p in lab.plan.pods if p != plain]
    expected = {"node1": 1, "node2": 2}  # HBONE pods per node (pod1-2 is the TCP workload)
    assert {n: _enrolled(lab, n) for n in expected} == expected
    whole = _reordered(lab)
    loaded = metric(lab.metrics("node2"), "zt_config_generation")
    _write_in_place(lab, whole)  # same mesh, another order: loads as an equal snapshot
    assert _wait(lambda: metric(lab.metrics("node2"), "zt_config_generation") > loaded, 10)
    half, empty = _valid_half(whole), ""
    torn = whole[: len(whole) // 2 + 7]  # cut mid-line: not valid YAML, or not a valid mesh

    stop, watch = threading.Event(), Watch()
    prober = threading.Thread(target=_probe_loop, args=(lab, hbone, stop, watch), daemon=True)
    prober.start()
    try:
        for _ in range(ROUNDS):  # half, empty, whole: within one second
            for text in (torn, half, empty, whole):
                _write_in_place(lab, text)
                time.sleep(0.25)
        time.sleep(2.5)  # whole again: settles and loads
        gen = metric(lab.metrics("node2"), "zt_config_generation")

        _write_in_place(lab, empty)  # an emptied file, held: refused, readiness stays
        assert _wait(lambda: metric(lab.metrics("node2"), "zt_config_last_reload_success") == 0, 10)
        status, body = _ready_body(lab, "node2")
        assert status == 200 and "refused (config_empty)" in body, body
        errors = metric(lab.metrics("node2"), "zt_config_reload_errors_total",
                        reason="config_empty")  # fmt: skip
        assert errors >= 1

        _write_in_place(lab, half)  # a valid half, held: loaded, node2's pods in grace
        assert _wait(lambda: metric(lab.metrics("node2"), "zt_pods_pending_removal") == 2, 10)
        assert metric(lab.metrics("node2"), "zt_config_generation") > gen
        _write_in_place(lab, whole)  # back within the grace period: kept untouched
        assert _wait(lambda: metric(lab.metrics("node2"), "zt_pods_pending_removal") == 0, 10)
        time.sleep(1.0)  # probes see the settled state too
    finally:
        stop.set()
        prober.join(timeout=scaled(60))

    assert not prober.is_alive()
    assert watch.answered_9090 == [], f"uncaptured: {watch.answered_9090[:5]}"
    assert watch.probes >= 3 * len(lab.plan.pods), watch
    assert watch.enrolled_seen == {n: {c} for n, c in expected.items()}, watch
    for node, pods in expected.items():
        text = lab.metrics(node)
        assert metric(text, "zt_pods") == pods
        assert metric(text, "zt_config_last_reload_success") == 1
        status, body = _ready_body(lab, node)
        assert (status, body) == (200, "ready\n")
    _served_at_the_end(lab, hbone, plain)
    print(
        f"\nconfig flap: {watch.probes} probes of :9090, none answered "
        f"({dict(watch.refused)}); {watch.map_samples} zt_pods samples per node, "
        f"always {expected}; {time.monotonic() - started:.1f} s"
    )


def _served_at_the_end(lab: Lab, hbone: list[PodPlan], plain: PodPlan) -> None:
    """Every pod's traffic goes through zt: each pod reaches every HBONE pod's app, and the
    destination node's access log records it (identity for HBONE, none for plaintext)."""
    for src in lab.plan.pods:
        for dst in hbone:
            if dst == src:
                continue
            offset = lab.offsets()[dst.node]
            ex = exchange(src.netns, str(dst.ipv4), mesh.APP_PORT, b"served " + src.name.encode())
            assert ex.echoed, f"{src.name} -> {dst.name}: {ex.error}"
            app = f"{dst.ipv4}:{mesh.APP_PORT}"
            if src == plain:  # plaintext: dst.addr is the app; through a tunnel, the authority
                rec = lab.wait_record(dst.node, offset, direction="inbound", dst__addr=app)
            else:
                rec = lab.wait_record(dst.node, offset, direction="inbound", dst__hbone_addr=app)
            if src == plain:
                assert not rec.get("src.identity").startswith("spiffe://"), rec
            else:
                assert rec.get("src.identity") == identity(src), rec


def _answers_as(lab: Lab, src: PodPlan, dst: PodPlan, want: str, seconds: float = 20.0) -> bool:
    """Until `dst` echoes `src` through HBONE with `want` as the destination identity (the
    source's zt checked the peer certificate's SAN against it: the tunnel proves it)."""
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        offset = lab.offsets()[src.node]
        ex = exchange(src.netns, str(dst.ipv4), mesh.APP_PORT, b"who", timeout=3)
        if ex.echoed:
            rec = lab.wait_record(src.node, offset, direction="outbound", src__addr=ex.local)
            if rec.get("dst.identity") == want and rec.get("protocol") == "hbone":
                return True
        time.sleep(0.3)
    return False


def test_a_pod_restarted_for_a_new_identity_stays_captured_throughout(lab: Lab) -> None:
    """pod2-1's service account changes: new certificate, new listeners. In the same netns the
    pod stays enrolled from its old listeners closing to the new ones registering (zt_pods never
    drops, :9090 is never answered), then it answers as its new identity; and back again."""
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    original = lab.state.config.read_text()
    doc = yaml.safe_load(original)
    for w in doc["workloads"]:
        if w["uid"] == "lab/pod2-1":
            w["serviceAccount"] = "sa-renamed"
    renamed = "spiffe://cluster.local/ns/lab/sa/sa-renamed"
    stop, watch = threading.Event(), Watch()
    prober = threading.Thread(target=_probe_loop, args=(lab, [b], stop, watch), daemon=True)
    offset = lab.offsets()["node2"]
    prober.start()
    try:
        lab.write_config(yaml.safe_dump(doc, sort_keys=False))
        assert _answers_as(lab, a, b, renamed), runner.tail(lab.log("node2"), 20)
        lab.write_config(original)
        assert _answers_as(lab, a, b, identity(b)), runner.tail(lab.log("node2"), 20)
    finally:
        lab.write_config(original)
        stop.set()
        prober.join(timeout=scaled(60))
    log = lab.log("node2").read_bytes()[offset:].decode(errors="replace")
    assert log.count("pod lab/pod2-1 stopped (unenroll=False)") == 2, log[-3000:]
    assert "pod lab/pod2-1 stopped (unenroll=True)" not in log
    assert watch.answered_9090 == [], f"uncaptured: {watch.answered_9090[:5]}"
    assert watch.enrolled_seen["node2"] == {2}, watch
    print(
        f"\nrestart x2: {watch.probes} probes of pod2-1:9090, none answered "
        f"({dict(watch.refused)}); zt_pods on node2 always 2 over {watch.map_samples} samples"
    )
