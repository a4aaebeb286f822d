"""The lab's mesh config, derived from its plan: a workload per pod, one plain-TCP workload, a
service with a VIP in front of the last node's pods, and one DENY policy."""

from __future__ import annotations

from zt.lab.topology import LabPlan, PodPlan

SERVICE_HOST = "echo.lab.svc.cluster.local"
SERVICE_VIP4 = "10.96.0.10"
SERVICE_VIP6 = "fd00:96::10"
SERVICE_PORT = 80
APP_PORT = 8080
DENIED_PORT = 9090  # the DENY policy refuses every connection to this port


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


def mesh_config(lab: LabPlan) -> dict[str, object]:
    plain = tcp_pod(lab)
    behind_service = set(lab.pods_of(lab.nodes[-1].name))
    workloads = [
        _workload(
            pod,
            "TCP" if pod == plain else "HBONE",
            {f"lab/{SERVICE_HOST}": {SERVICE_PORT: APP_PORT}} if pod in behind_service else {},
        )
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
    return {"workloads": workloads, "services": [service], "policies": [deny]}
