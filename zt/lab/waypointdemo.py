"""`zt lab demo` rows of a lab with a waypoint (`zt lab up --waypoint`): HTTP to the web service,
whose traffic zt sends through the waypoint Envoy, judged from the response, from the waypoint's
own stats (its L7 policy and its HBONE upstream) and from both nodes' access logs (the client's
tunnel goes to the waypoint; the pod's node sees the waypoint's identity, never the client's).
A third row proves the L4 half: a tunnel straight from the client to the pod is refused."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from zt.lab import logs, mesh, waypoint, web
from zt.lab import waypointconfig as wpconfig
from zt.lab.demodriver import Driver, Row, endpoint, identities
from zt.lab.logs import AccessRecord
from zt.lab.topology import PodPlan

UPSTREAM = f"cluster.{wpconfig.CONNECT_ORIGINATE}.upstream_rq_total"  # CONNECTs to pods


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    status: int
    rbac: str  # the waypoint's RBAC stat that must grow by one: "allowed" or "denied"


CASES = (
    Case("waypoint L7 allow", "/", 200, "allowed"),
    Case("waypoint L7 deny", wpconfig.DENIED_PREFIX, 403, "denied"),
)


def _grew(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def _inbound_to_web(rec: AccessRecord) -> bool:
    return rec.direction == "inbound" and endpoint(rec).endswith(f":{mesh.WEB_APP_PORT}")


@dataclass
class WaypointDriver:
    driver: Driver

    @property
    def wp(self) -> PodPlan:
        wp = self.driver.lab.waypoint
        assert wp is not None, "a lab without a waypoint has no waypoint rows"
        return wp

    @property
    def client(self) -> PodPlan:
        lab = self.driver.lab
        return lab.pods_of(lab.nodes[0].name)[0]

    def through(self, case: Case) -> Row:
        """GET case.path from the client pod to the web service's VIP."""
        lab, src, wp = self.driver.lab, self.client, self.wp
        dest = lab.nodes[-1].name
        offsets = {n.name: logs.size(self.driver.log(n.name)) for n in lab.nodes}
        backend = waypoint.backends(lab)[0]
        before = waypoint.stats(wp.netns)
        resp = web.get(src.netns, mesh.WEB_VIP4, mesh.WEB_PORT, case.path)
        out = logs.wait_for(
            self.driver.log(src.node),
            offsets[src.node],
            lambda r: r.direction == "outbound" and r.get("src.addr") == resp.local,
        )
        inb = None
        if case.status == 200:  # the web app answers with Connection: close: the tunnel ends
            inb = logs.wait_for(self.driver.log(dest), offsets[dest], _inbound_to_web)
        after = waypoint.stats(wp.netns)
        problems = self.check_response(case, resp)
        rbac = f"http.{backend.cluster}.rbac.{case.rbac}"
        if (n := _grew(before, after, rbac)) != 1:
            problems.append(f"waypoint {rbac} grew by {n}, expected 1")
        want_up = 1 if case.status == 200 else 0
        if (n := _grew(before, after, UPSTREAM)) != want_up:
            problems.append(f"waypoint CONNECTs to pods grew by {n}, expected {want_up}")
        problems += self.check_out(out, src)
        if case.status == 200:
            problems += self.check_in(inb)
        hop = f"{wp.ipv4}:{wpconfig.HBONE_PORT}"
        detail = "; ".join(problems) or (
            f"envoy rbac.{case.rbac} +1, CONNECTs to pods +{want_up}"
            + (f"; in policy={inb.get('policy')}" if inb is not None else "; app not reached")
        )
        return Row(
            case.name,
            f"{src.name} -> {mesh.WEB_VIP4}:{mesh.WEB_PORT} GET {case.path} [hbone via {hop}]",
            identities(out),
            identities(inb) if case.status == 200 else "(not reached)",
            f"HTTP {resp.status or '-'}, {len(resp.body)} B",
            not problems,
            detail,
        )

    def check_response(self, case: Case, resp: web.Response) -> list[str]:
        if resp.status != case.status:
            return [f"HTTP {resp.status or resp.error}, expected {case.status}"]
        if case.status == 403 and resp.body != wpconfig.RBAC_BODY:
            return [f"403 body {resp.body!r}, expected Envoy's {wpconfig.RBAC_BODY!r}"]
        want = web.BODY.format(method="GET", path=case.path)
        if case.status == 200 and resp.body != want:
            return [f"body {resp.body!r}, expected the web app's {want!r}"]
        return []

    def check_out(self, rec: AccessRecord | None, src: PodPlan) -> list[str]:
        """The client's node tunnelled to the waypoint, naming the VIP as the HBONE target."""
        if rec is None:
            return ["no outbound access record on the client's node"]
        want = {
            "protocol": "hbone",
            "src.identity": self.driver.workload_identity(src),
            "dst.addr": f"{self.wp.ipv4}:{wpconfig.HBONE_PORT}",
            "dst.hbone_addr": f"{mesh.WEB_VIP4}:{mesh.WEB_PORT}",
        }
        return [
            f"out {k}={rec.get(k)!r}, expected {v!r}" for k, v in want.items() if rec.get(k) != v
        ]

    def check_in(self, rec: AccessRecord | None) -> list[str]:
        """The pod's node saw the waypoint's identity, admitted by the ALLOW policy."""
        if rec is None:
            return [f"no inbound access record to :{mesh.WEB_APP_PORT} on the pods' node"]
        want = {"src.identity": mesh.waypoint_identity(), "policy": f"lab/{mesh.WAYPOINT_POLICY}"}
        problems = [
            f"in {k}={rec.get(k)!r}, expected {v!r}" for k, v in want.items() if rec.get(k) != v
        ]
        if rec.flags != "-":
            problems.append(f"in response_flags={rec.flags}, expected -")
        return problems

    def bypass(self) -> Row:
        """Straight to a web pod's own address (a workload without a waypoint of its own: zt
        tunnels to the pod directly): the ALLOW policy there admits only the waypoint."""
        lab, src = self.driver.lab, self.client
        pod = mesh.web_pods(lab)[0]
        offsets = {n.name: logs.size(self.driver.log(n.name)) for n in lab.nodes}
        resp = web.get(src.netns, str(pod.ipv4), mesh.WEB_APP_PORT, "/")
        inb = logs.wait_for(self.driver.log(pod.node), offsets[pod.node], _inbound_to_web)
        problems = []
        if resp.status:
            problems.append(f"HTTP {resp.status} through a tunnel that should be refused")
        if inb is None:
            problems.append(f"no inbound access record on {pod.node}")
        else:
            if inb.flags != "DENY":
                problems.append(f"in response_flags={inb.flags}, expected DENY")
            if inb.get("src.identity") != self.driver.workload_identity(src):
                problems.append(
                    f"in src.identity={inb.get('src.identity')!r}, expected the client's"
                )
        return Row(
            "waypoint bypass refused (L4)",
            f"{src.name} -> {pod.ipv4}:{mesh.WEB_APP_PORT} GET / [hbone, no waypoint]",
            "-",
            identities(inb),
            f"HTTP {resp.status or '-'}, {len(resp.body)} B",
            not problems,
            "; ".join(problems) or f"in flags=DENY ({resp.error or 'closed'} at the app)",
        )


def run(driver: Driver, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    wd = WaypointDriver(driver)
    rows: list[Row] = []
    steps: list[Callable[[], Row]] = [functools.partial(wd.through, c) for c in CASES]
    for step in [*steps, wd.bypass]:
        rows.append(step())
        if on_row is not None:
            on_row(rows[-1])
    return rows
