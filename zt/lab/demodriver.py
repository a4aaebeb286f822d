"""The demo's building blocks: a scenario, the row it becomes, and the driver that runs one
through a lab and judges it from what the app saw and from both nodes' access logs (identities,
bytes, response flags). `zt lab demo` (zt/lab/demo.py) and the waypoint rows
(zt/lab/waypointdemo.py) are made of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zt.lab import logs
from zt.lab.apps import Exchange, exchange, exchange_by_name
from zt.lab.logs import AccessRecord
from zt.lab.state import LabState
from zt.lab.topology import LabPlan, PodPlan

POLICY = "lab/deny-port-9090"


@dataclass(frozen=True)
class Row:
    scenario: str
    path: str
    source_side: str  # identities the source node logged: "src -> dst"
    dest_side: str  # identities the destination node logged
    bytes: str  # "sent/received" as the app saw it
    ok: bool
    detail: str

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"


@dataclass(frozen=True)
class Scenario:
    name: str
    src: PodPlan
    host: str
    port: int
    expect_echo: bool
    protocol: str  # the source node's access-log `protocol`, "" if the source is not captured
    dest_node: str | None  # node whose inbound log must show it (None: not a mesh pod)
    flags: str = "-"
    # `host` is a name the pod resolves through its captured DNS (zt.lab.dns) to one of these
    resolves_to: frozenset[str] = frozenset()


def _short(identity: str) -> str:
    return identity.rpartition("/sa/")[2] or "-"


def identities(rec: AccessRecord | None) -> str:
    if rec is None:
        return "(no record)"
    return f"{_short(rec.get('src.identity'))} -> {_short(rec.get('dst.identity'))}"


@dataclass
class Driver:
    state: LabState
    lab: LabPlan
    marker: bytes
    size: int = 16384

    def log(self, node: str) -> Path:
        return self.state.dir / f"{node}.log"

    def payload(self, clear_ok: bool) -> bytes:
        """Marked payload for mesh traffic; plaintext scenarios (which legitimately cross the
        link in clear) send bytes without the marker."""
        head = b"plaintext-" if clear_ok else self.marker
        return (head * (self.size // len(head) + 1))[: self.size]

    def run(self, sc: Scenario) -> Row:
        nodes = {n.name for n in self.lab.nodes}
        offsets = {n: logs.size(self.log(n)) for n in nodes}
        data = self.payload(clear_ok=not sc.protocol or sc.protocol == "passthrough")
        if sc.resolves_to:
            ex = exchange_by_name(sc.src.netns, sc.host, sc.port, data)
        else:
            ex = exchange(sc.src.netns, sc.host, sc.port, data)
        out = None
        if sc.protocol:
            out = logs.wait_for(
                self.log(sc.src.node),
                offsets[sc.src.node],
                lambda r: r.direction == "outbound" and r.get("src.addr") == ex.local,
            )
        inb = None
        if sc.dest_node is not None:
            target = endpoint(out) if out is not None else f"{sc.host}:{sc.port}"
            inb = logs.wait_for(
                self.log(sc.dest_node),
                offsets[sc.dest_node],
                lambda r: r.direction == "inbound" and endpoint(r) == _addr(target),
            )
        return self.judge(sc, ex, out, inb)

    def judge(
        self, sc: Scenario, ex: Exchange, out: AccessRecord | None, inb: AccessRecord | None
    ) -> Row:
        problems = []
        if ex.echoed != sc.expect_echo:
            problems.append(f"app: {'no echo: ' + ex.error if sc.expect_echo else 'echoed'}")
        if not sc.expect_echo and ex.received:
            problems.append(f"app got {len(ex.received)} bytes through a refused connection")
        if sc.resolves_to and ex.peer not in sc.resolves_to:
            problems.append(f"{sc.host} resolved to {ex.peer or 'nothing'}, expected one of "
                            f"{', '.join(sorted(sc.resolves_to))}")  # fmt: skip
        if sc.protocol:
            problems += _check_out(sc, out, self.workload_identity(sc.src))
        if sc.dest_node is not None:
            problems += _check_in(sc, inb, self.workload_identity(sc.src), ex)
        hop = out.get("dst.addr") if out is not None and out.get("dst.hbone_addr") else ""
        path = f"{sc.src.name} -> {_addr(f'{sc.host}:{sc.port}')}" + (
            f" [{out.get('protocol')}{' via ' + hop if hop else ''}]" if out is not None else ""
        )
        detail = "; ".join(problems) or _flags(out, inb)
        if sc.resolves_to and not problems:
            detail = f"{sc.host} -> {ex.peer} (DNS through the pod's proxy); {detail}"
        return Row(
            sc.name,
            path,
            identities(out) if sc.protocol else "(not captured)",
            identities(inb) if sc.dest_node else "-",
            f"{ex.sent}/{len(ex.received)}",
            not problems,
            detail,
        )

    def workload_identity(self, pod: PodPlan) -> str:
        return f"spiffe://cluster.local/ns/lab/sa/sa-{pod.name}"


def endpoint(rec: AccessRecord) -> str:
    """The app address a record's connection went to: the HBONE authority through a tunnel
    (dst.addr is then the :15008 hop), else dst.addr."""
    return rec.get("dst.hbone_addr") or rec.get("dst.addr")


def _addr(text: str) -> str:
    host, _, port = text.rpartition(":")
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else text


def _flags(out: AccessRecord | None, inb: AccessRecord | None) -> str:
    parts = [f"{side} flags={r.flags}" for side, r in (("out", out), ("in", inb)) if r is not None]
    if inb is not None and inb.get("policy"):
        parts.append(f"policy={inb.get('policy')}")
    return ", ".join(parts) or "-"


def _check_out(sc: Scenario, rec: AccessRecord | None, src_id: str) -> list[str]:
    if rec is None:
        return ["no outbound access record on the source node"]
    problems = []
    if rec.get("protocol") != sc.protocol:
        problems.append(f"out protocol={rec.get('protocol')!r}, expected {sc.protocol!r}")
    want_id = src_id if sc.protocol == "hbone" else ""  # logged only when mTLS proves it
    if rec.get("src.identity") != want_id:
        problems.append(f"out src.identity={rec.get('src.identity')!r}, expected {want_id!r}")
    if rec.flags != sc.flags:
        problems.append(f"out response_flags={rec.flags}, expected {sc.flags}")
    return problems


def _check_in(sc: Scenario, rec: AccessRecord | None, src_id: str, ex: Exchange) -> list[str]:
    if rec is None:
        return [f"no inbound access record on {sc.dest_node}"]
    problems = []
    want_id = src_id if sc.protocol == "hbone" else ""
    if rec.get("src.identity") != want_id:
        problems.append(f"in src.identity={rec.get('src.identity')!r}, expected {want_id!r}")
    if rec.flags != sc.flags:
        problems.append(f"in response_flags={rec.flags}, expected {sc.flags}")
    if sc.flags == "DENY" and rec.get("policy") != POLICY:
        problems.append(f"in policy={rec.get('policy')!r}, expected {POLICY}")
    if sc.expect_echo and rec.count("bytes_recv") != ex.sent:
        problems.append(f"in bytes_recv={rec.get('bytes_recv')}, app sent {ex.sent}")
    return problems
