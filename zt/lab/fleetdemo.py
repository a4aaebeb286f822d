"""The fleet lab's demo rows (`zt lab demo` on a lab with `--control etcd`) and the probes the
fleet tests share: a policy push timed until every node enforces it, traffic while etcd is frozen,
and a node asking the signer for another node's workload identity.

"Enforced" is observed, not inferred: a probe connection from a pod on one node to a pod on the
next is refused (or echoes again), judged by the app, as in the rest of the demo.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from zt.lab import fleet, fleetident, mesh, runner
from zt.lab.apps import connect_only, exchange
from zt.lab.demodriver import Row
from zt.lab.state import LabState
from zt.lab.topology import LabPlan, PodPlan

PROBE_POLICY = "deny-push-probe"
PROBE = b"probe\n"
_POLICY_ROW = "policy pushed to every node"
_ETCD_ROW = "etcd down: traffic continues"
_IDENTITY_ROW = "node cannot get another node's identity"


@dataclass(frozen=True)
class ProbePath:
    """One probed path: src pod -> dst pod's app port; `enforcer` is the dst pod's node."""

    src: PodPlan
    dst: PodPlan

    @property
    def enforcer(self) -> str:
        return self.dst.node


def probe_paths(lab: LabPlan) -> list[ProbePath]:
    """For every node, a path INTO its first pod from the first pod of the next node: a DENY on
    those destinations must be enforced by each node (policy is the destination's to enforce)."""
    nodes = lab.nodes
    return [
        ProbePath(lab.pods_of(nodes[(i + 1) % len(nodes)].name)[0], lab.pods_of(n.name)[0])
        for i, n in enumerate(nodes)
    ]


def probe_policy(paths: list[ProbePath]) -> dict[str, object]:
    """DENY to the probed pods' app port only (other traffic in the lab is left alone)."""
    return {
        "name": PROBE_POLICY,
        "namespace": "lab",
        "scope": "Namespace",
        "action": "Deny",
        "rules": [
            [[{"destinationIps": [f"{p.dst.ipv4}/32" for p in paths],
               "destinationPorts": [mesh.APP_PORT]}]]
        ],
    }  # fmt: skip


def with_policy(
    document: dict[str, list[object]], policy: dict[str, object] | None
) -> dict[str, list[object]]:
    """The document with the probe policy added (or removed when None)."""
    kept = [
        p
        for p in document.get("policies", [])
        if not (isinstance(p, dict) and p.get("name") == PROBE_POLICY)
    ]
    return {**document, "policies": [*kept, *([policy] if policy else [])]}


def refused(path: ProbePath, timeout: float = 3.0) -> bool:
    ex = exchange(path.src.netns, str(path.dst.ipv4), mesh.APP_PORT, PROBE, timeout=timeout)
    return not ex.echoed


def wait_outcome(path: ProbePath, want_refused: bool, since: float, timeout: float) -> float:
    """Seconds from `since` (time.monotonic) until a probe on path has the wanted outcome."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        if refused(path) == want_refused:
            return time.monotonic() - since
        time.sleep(0.005)
    raise TimeoutError(
        f"{path.src.name} -> {path.dst.name}:{mesh.APP_PORT} still "
        f"{'echoes' if want_refused else 'refused'} {timeout:g} s after the push"
    )


def push_and_time(
    state: LabState, document: dict[str, list[object]], want_refused: bool, timeout: float = 5.0
) -> tuple[int, dict[str, float]]:
    """Push, then probe every path in parallel: (revision, {enforcing node: seconds from the
    push's return until its path showed the outcome})."""
    paths = probe_paths(state.plan)
    revision = fleet.push_document(state, document, "lab demo")
    since = time.monotonic()
    with ThreadPoolExecutor(len(paths)) as pool:
        futures = {
            p.enforcer: pool.submit(wait_outcome, p, want_refused, since, timeout) for p in paths
        }
        return revision, {node: f.result() for node, f in futures.items()}


def _ms(times: dict[str, float]) -> str:
    return ", ".join(f"{node} {t * 1000:.0f} ms" for node, t in sorted(times.items()))


def policy_row(state: LabState) -> Row:
    paths = probe_paths(state.plan)
    base, _ = fleet.get_document(state)
    base = with_policy(base, None)
    try:
        rev_on, on = push_and_time(state, with_policy(base, probe_policy(paths)), True)
        rev_off, off = push_and_time(state, base, False)
    except (TimeoutError, OSError, RuntimeError) as exc:
        return Row(_POLICY_ROW, "zt config push (ctl)", "-", "-", "-", False, str(exc))
    ok = max(on.values()) < 1.0 and max(off.values()) < 1.0
    detail = f"DENY at revision {rev_on} enforced: {_ms(on)}; removed at {rev_off}: {_ms(off)}" + (
        "" if ok else " (expected < 1000 ms)"
    )
    path = ", ".join(f"{p.src.name} -> {p.dst.name}:{mesh.APP_PORT}" for p in paths)
    return Row(_POLICY_ROW, path, "-", "-", "-", ok, detail)


def node_metric(state: LabState, node: str, name: str) -> float | None:
    """One gauge of a node's /metrics (None if absent or the node does not answer)."""
    try:
        status, body = runner.http_get(state.plan.node(node).netns, runner.METRICS_PORT, "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_metric(
    state: LabState, name: str, value: float, timeout: float, since: float | None = None
) -> float:
    """Seconds (from `since`, default now) until every node reports name == value."""
    start = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout
    nodes = [n.name for n in state.plan.nodes]
    while time.monotonic() < deadline:
        if all(node_metric(state, n, name) == value for n in nodes):
            return time.monotonic() - start
        time.sleep(0.1)
    seen = {n: node_metric(state, n, name) for n in nodes}
    raise TimeoutError(f"{name} != {value:g} on some node after {timeout:g} s: {seen}")


def echo_on(sock: socket.socket, text: bytes) -> bool:
    """One round trip on an open app connection."""
    try:
        sock.sendall(text)
        got = b""
        while len(got) < len(text):
            chunk = sock.recv(len(text) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == text
    except OSError:
        return False


def etcd_down_row(state: LabState, frozen: float = 4.0) -> Row:
    """Freeze every member (SIGSTOP): old and new connections keep working; after SIGCONT every
    node reports zt_config_synced 1 again."""
    path = probe_paths(state.plan)[0]
    host = str(path.dst.ipv4)
    problems: list[str] = []
    old = connect_only(path.src.netns, host, mesh.APP_PORT)
    notes = []
    try:
        if not echo_on(old, b"before\n"):
            problems.append("the old connection did not echo before the freeze")
        fleet.signal_members(state, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            try:
                t = wait_metric(state, "zt_config_synced", 0.0, frozen + 6.0, since=stopped)
                notes.append(f"synced 0 after {t:.1f} s")
            except TimeoutError as exc:
                problems.append(str(exc))
            while time.monotonic() - stopped < frozen:
                time.sleep(0.1)
            new = exchange(path.src.netns, host, mesh.APP_PORT, PROBE * 100)
            if not new.echoed:
                problems.append(f"new connection while etcd was frozen: {new.error}")
            if not echo_on(old, b"during\n"):
                problems.append("the old connection stopped echoing while etcd was frozen")
        finally:
            fleet.signal_members(state, signal.SIGCONT)
        resumed = time.monotonic()
        notes.insert(0, f"{len(fleet.MEMBERS)} members frozen {resumed - stopped:.1f} s")
        try:
            t = wait_metric(state, "zt_config_synced", 1.0, 15.0, since=resumed)
            notes.append(f"synced 1 again {t:.1f} s after resume")
        except TimeoutError as exc:
            problems.append(str(exc))
    finally:
        old.close()
    detail = "; ".join(problems) or f"old + new connections echoed; {', '.join(notes)}"
    return Row(
        _ETCD_ROW,
        f"{path.src.name} -> {path.dst.name}:{mesh.APP_PORT}",
        "-",
        "-",
        "-",
        not problems,
        detail,
    )


def run(state: LabState, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    rows: list[Row] = []
    for make in (policy_row, etcd_down_row, identity_row):
        rows.append(make(state))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def identity_row(state: LabState) -> Row:
    return fleetident.identity_row(state, _IDENTITY_ROW)


__all__ = ["etcd_down_row", "identity_row", "policy_row", "run"]
