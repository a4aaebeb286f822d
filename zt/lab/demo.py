"""`zt lab demo`: real traffic through a running lab, one table row per scenario, each judged from
what the app saw and from both nodes' access logs (identities, bytes, response flags), plus a
capture of the node link proving it carried only TLS to :15008 (`zt lab demo`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zt.errors import UsageError
from zt.lab import logs, mesh, wire
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


def scenarios(lab: LabPlan) -> list[Scenario]:
    if len(lab.nodes) < 2 or any(len(lab.pods_of(n.name)) < 2 for n in lab.nodes):
        raise UsageError("lab: the demo needs at least 2 nodes with 2 pods each (--nodes/--pods)")
    first, last = lab.nodes[0].name, lab.nodes[-1].name
    a, tcp = lab.pods_of(first)[0], mesh.tcp_pod(lab)
    b, b2 = lab.pods_of(last)[0], lab.pods_of(last)[1]
    app, denied = mesh.APP_PORT, mesh.DENIED_PORT
    vips = frozenset({f"{mesh.SERVICE_VIP4}:{mesh.SERVICE_PORT}",
                      f"[{mesh.SERVICE_VIP6}]:{mesh.SERVICE_PORT}"})  # fmt: skip
    return [
        Scenario("cross-node HBONE", a, str(b.ipv4), app, True, "hbone", last),
        Scenario("cross-node HBONE (IPv6)", a, str(b.ipv6), app, True, "hbone", last),
        Scenario("same node", b, str(b2.ipv4), app, True, "hbone", last),
        Scenario("service VIP", a, mesh.SERVICE_VIP4, mesh.SERVICE_PORT, True, "hbone", last),
        Scenario(
            "DNS: service by name",
            a,
            mesh.SERVICE_HOST,
            mesh.SERVICE_PORT,
            True,
            "hbone",
            last,
            resolves_to=vips,
        ),
        Scenario("TCP workload", a, str(tcp.ipv4), app, True, "tcp", None),
        Scenario("passthrough", a, str(lab.external_ipv4), app, True, "passthrough", None),
        Scenario("DENY policy (HBONE)", a, str(b.ipv4), denied, False, "hbone", last, "DENY"),
        Scenario("DENY policy (plaintext)", tcp, str(b.ipv4), denied, False, "", last, "DENY"),
    ]


def mesh_ips(lab: LabPlan) -> set[str]:
    """Addresses of the HBONE pods (the TCP workload is outside ambient capture by design) and
    of the waypoint, which speaks only HBONE to them."""
    tcp = mesh.tcp_pod(lab)
    pods = [p for p in lab.pods if p != tcp] + ([lab.waypoint] if lab.waypoint else [])
    return {str(ip) for p in pods for ip in (p.ipv4, p.ipv6)}


def run(state: LabState, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Every scenario in order, the node link sniffed on the first node throughout."""
    lab = state.plan
    driver = Driver(state, lab, b"ZT-DEMO-" + os.urandom(6).hex().encode() + b"-")
    rows: list[Row] = []
    with wire.sniffing(lab.nodes[0].netns, lab.nodes[0].link) as segments:
        for sc in scenarios(lab):
            rows.append(driver.run(sc))
            if on_row is not None:
                on_row(rows[-1])
        if state.waypoint:  # inside the sniff: the waypoint's hop to the pods crosses the link
            from zt.lab import waypointdemo  # noqa: PLC0415 (it imports this module)

            rows += waypointdemo.run(driver, on_row)
    report = wire.analyse(segments, mesh_ips(lab), driver.marker)
    link = f"{lab.nodes[0].netns}/{lab.nodes[0].link}"
    rows.append(
        Row(
            "node link: only TLS to :15008",
            f"scapy on {link}",
            "-",
            "-",
            f"{sum(len(s.payload) for s in segments)} B seen",
            report.ok,
            report.summary(),
        )
    )
    if on_row is not None:
        on_row(rows[-1])
    return rows


COLUMNS = ("#", "scenario", "path", "source node saw", "dest node saw", "bytes", "verdict")


def table(rows: list[Row]) -> str:
    cells = [
        (str(i), r.scenario, r.path, r.source_side, r.dest_side, r.bytes, r.verdict)
        for i, r in enumerate(rows, 1)
    ]
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(COLUMNS), line(tuple("-" * w for w in widths))]
    for row, c in zip(rows, cells, strict=True):
        out.append(line(c))
        out.append(" " * (widths[0] + 2) + row.detail)
    return "\n".join(out)


def failed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if not r.ok]
