"""`zt lab demo`: real traffic through a running lab, one table row per scenario, each judged from
what the app saw and from both nodes' access logs (identities, bytes, response flags), plus a
capture of the node link proving it carried only TLS to :15008 (`zt lab demo`)."""

from __future__ import annotations

import os
from collections.abc import Callable

from zt.errors import UsageError
from zt.lab import mesh, waypointdemo, wire
from zt.lab.demodriver import Driver, Row, Scenario
from zt.lab.state import LabState
from zt.lab.topology import LabPlan


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
