"""A snapshot back to a normalized document (camelCase, defaults filled in), loadable again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zt.state.model import (
    ApplicationTunnel,
    GatewayAddress,
    Match,
    NetworkAddress,
    Policy,
    Service,
    ServiceAccountMatch,
    Workload,
)
from zt.state.snapshot import Snapshot


def workload(w: Workload) -> dict[str, object]:
    return {
        "uid": w.uid,
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "trustDomain": w.trust_domain,
        "workloadIps": [str(ip) for ip in w.ips],
        "network": w.network,
        "protocol": w.protocol.value,
        "node": w.node,
        "netns": w.netns,
        "status": w.status.value,
        "services": {k: dict(v) for k, v in w.services.items()},
        "authorizationPolicies": list(w.authorization_policies),
        "workloadName": w.workload_name,
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "clusterId": w.cluster_id,
        "locality": {
            "region": w.locality.region,
            "zone": w.locality.zone,
            "subzone": w.locality.subzone,
        },
        "hostname": w.hostname,
        "waypoint": gateway_address(w.waypoint),
        "applicationTunnel": application_tunnel(w.application_tunnel),
        "identity": w.identity,
    }


def service(s: Service) -> dict[str, object]:
    out: dict[str, object] = {
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": [f"{network}/{ip}" for network, ip in s.vips],
        "ports": dict(s.ports),
        "subjectAltNames": list(s.subject_alt_names),
        "waypoint": gateway_address(s.waypoint),
    }
    lb = s.load_balancer
    if lb is not None:  # as the mesh file says it (zt/config/schema.py LoadBalancerModel)
        out["loadBalancer"] = {
            "routingPreferences": [scope.value for scope in lb.routing_preferences],
            "mode": lb.mode.value,
            "healthPolicy": lb.health_policy.value,
        }
    return out


def gateway_address(g: GatewayAddress | None) -> dict[str, object] | None:
    if g is None:
        return None
    d = g.destination
    destination = (
        {"network": d.network, "address": str(d.address)}
        if isinstance(d, NetworkAddress)
        else {"namespace": d.namespace, "hostname": d.hostname}
    )
    return {"destination": destination, "hboneMtlsPort": g.hbone_mtls_port}


def application_tunnel(t: ApplicationTunnel | None) -> dict[str, object] | None:
    return None if t is None else {"protocol": t.protocol.value, "port": t.port}


def _account(a: ServiceAccountMatch) -> dict[str, str]:
    return {"namespace": a.namespace, "serviceAccount": a.service_account}


# camelCase field -> how one value of it is written back
_MATCH_FIELDS: tuple[tuple[str, Callable[[Any], object]], ...] = (
    *((f, str) for f in ("namespaces", "notNamespaces", "principals", "notPrincipals")),
    *((f, _account) for f in ("serviceAccounts", "notServiceAccounts")),
    *((f, str) for f in ("sourceIps", "notSourceIps", "destinationIps", "notDestinationIps")),
    *((f, int) for f in ("destinationPorts", "notDestinationPorts")),
)


def match(m: Match) -> dict[str, object]:
    out: dict[str, object] = {}
    for field, write in _MATCH_FIELDS:
        values = getattr(m, _snake(field))
        if values:
            out[field] = [write(v) for v in values]
    return out


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def policy(p: Policy) -> dict[str, object]:
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": p.scope.value,
        "action": p.action.value,
        "dryRun": p.dry_run,
        "rules": [[[match(m) for m in clause] for clause in rule] for rule in p.rules],
    }


def document(snapshot: Snapshot, *, with_identity: bool = True) -> dict[str, object]:
    workloads = [workload(w) for w in snapshot.workloads]
    if not with_identity:
        for w in workloads:
            del w["identity"]
    return {
        "workloads": workloads,
        "services": [service(s) for s in snapshot.services],
        "policies": [policy(p) for p in snapshot.policies],
    }
