"""The lab's mesh config, derived from its plan: a workload per pod, one plain-TCP workload, a
service with a VIP in front of the last node's pods, and one DENY policy. A lab with a waypoint
adds its workload, a second service in front of the same pods (an HTTP app) whose traffic goes
through the waypoint (`waypoint:`), and an ALLOW policy on those pods admitting only the waypoint
to that app's port (so a tunnel straight from a client is refused)."""

from __future__ import annotations

from zt.lab.topology import LabPlan, PodPlan

SERVICE_HOST = "echo.lab.svc.cluster.local"
SERVICE_VIP4 = "10.96.0.10"
SERVICE_VIP6 = "fd00:96::10"
SERVICE_PORT = 80
APP_PORT = 8080
DENIED_PORT = 9090  # the DENY policy refuses every connection to this port
WEB_HOST = "web.lab.svc.cluster.local"
WEB_VIP4 = "10.96.0.20"
WEB_VIP6 = "fd00:96::20"
WEB_PORT = 80
WEB_APP_PORT = 8081  # the HTTP app (zt.lab.web) behind the waypoint
WAYPOINT_SA = "waypoint"
WAYPOINT_POLICY = "web-via-waypoint"
TRUST_DOMAIN = "cluster.local"


def waypoint_identity() -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/lab/sa/{WAYPOINT_SA}"


def tcp_pod(lab: LabPlan) -> PodPlan:
    """The last pod of the first node runs without HBONE (a workload outside ambient capture)."""
    return lab.pods_of(lab.nodes[0].name)[-1]


def _workload(
    pod: PodPlan, protocol: str, services: dict[str, dict[int, int]]
) -> dict[str, object]:
    return {
        "uid": f"lab/{pod.name}",
        "name": pod.name,
        "namespace": "lab",
        "serviceAccount": f"sa-{pod.name}",
        "workloadIps": [str(pod.ipv4), str(pod.ipv6)],
        "protocol": protocol,
        "node": pod.node,
        "netns": pod.netns,
        "services": services,
        # what istio_tcp_* labels carry besides the pod's name: every pod runs the lab's echo app
        # (canonical service "echo", revision "v1"); the zone is the node it runs on
        "canonicalName": "echo",
        "canonicalRevision": "v1",
        "clusterId": "lab",
        "locality": {"region": "lab", "zone": pod.node},
    }


def web_pods(lab: LabPlan) -> tuple[PodPlan, ...]:
    """The pods behind both services (the echo and, with a waypoint, the web service)."""
    return lab.pods_of(lab.nodes[-1].name)


def _services_of(lab: LabPlan, pod: PodPlan) -> dict[str, dict[int, int]]:
    if pod not in web_pods(lab):
        return {}
    out = {f"lab/{SERVICE_HOST}": {SERVICE_PORT: APP_PORT}}
    if lab.waypoint is not None:
        out[f"lab/{WEB_HOST}"] = {WEB_PORT: WEB_APP_PORT}
    return out


def mesh_config(lab: LabPlan) -> dict[str, object]:
    plain = tcp_pod(lab)
    workloads = [
        _workload(pod, "TCP" if pod == plain else "HBONE", _services_of(lab, pod))
        for pod in lab.pods
    ]
    service = {
        "name": "echo",
        "namespace": "lab",
        "hostname": SERVICE_HOST,
        "vips": [f"/{SERVICE_VIP4}", f"/{SERVICE_VIP6}"],
        "ports": {SERVICE_PORT: APP_PORT},
    }
    deny = {
        "name": "deny-port-9090",
        "namespace": "lab",
        "scope": "Namespace",
        "action": "Deny",
        "rules": [[[{"destinationPorts": [DENIED_PORT]}]]],
    }
    doc: dict[str, object] = {"workloads": workloads, "services": [service], "policies": [deny]}
    if lab.waypoint is not None:
        _add_waypoint(lab, lab.waypoint, doc)
    return doc


def _add_waypoint(lab: LabPlan, wp: PodPlan, doc: dict[str, object]) -> None:
    """The waypoint's workload (no `netns`: zt serves and captures no waypoint, as ztunnel), the
    web service pointing at it, and the ALLOW policy of the pods behind it."""
    waypoint = {
        **_workload(wp, "HBONE", {}),
        "serviceAccount": WAYPOINT_SA,
        "canonicalName": "waypoint",
    }
    del waypoint["netns"]
    web = {
        "name": "web",
        "namespace": "lab",
        "hostname": WEB_HOST,
        "vips": [f"/{WEB_VIP4}", f"/{WEB_VIP6}"],
        "ports": {WEB_PORT: WEB_APP_PORT},
        "waypoint": {
            "destination": {"network": "", "address": str(wp.ipv4)},
            "hboneMtlsPort": 15008,
        },
    }
    # ALLOW semantics (docs/config-reference.md, policies): with an Allow policy applying, what
    # matches none of its rules is denied; so rule 2 keeps every other port open to everyone
    principal = waypoint_identity().removeprefix("spiffe://")
    allow = {
        "name": WAYPOINT_POLICY,
        "namespace": "lab",
        "scope": "WorkloadSelector",
        "action": "Allow",
        "rules": [
            [[{"principals": [principal]}]],
            [[{"notDestinationPorts": [WEB_APP_PORT]}]],
        ],
    }
    workloads = doc["workloads"]
    assert isinstance(workloads, list)
    for entry, pod in zip(workloads, lab.pods, strict=True):
        if pod in web_pods(lab):
            entry["authorizationPolicies"] = [f"lab/{WAYPOINT_POLICY}"]
    workloads.append(waypoint)
    for key, item in (("services", web), ("policies", allow)):
        section = doc[key]
        assert isinstance(section, list)
        section.append(item)
