"""A validated zt mesh file -> ztunnel's local config, and its YAML as ztunnel's serde_yaml 0.9
reads it (enums as tags: `!Exact default`, `!Presence []`; a `{Exact: v}` mapping it refuses).

Pure. A zt field with no ztunnel counterpart is either noted (`netns`: ztunnel learns a pod's
network namespace from the CNI) or, if it is set to anything this exporter does not know, refused:
a field added to zt's schema later can never vanish from an export unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from zt.config.schema import MatchModel, MeshFile, PolicyModel, ServiceModel, WorkloadModel
from zt.config.ztunnel.to_zt import HEALTH, KINDS, MODES, ROUTING, Collect, Doc, Imported
from zt.state.model import StringMatch

_KIND_NAMES = {kind: name for name, kind in KINDS.items()}
ROUTING_BACK = {v: k for k, v in ROUTING.items()}
MODES_BACK = {v: k for k, v in MODES.items()}
HEALTH_BACK = {v: k for k, v in HEALTH.items()}

# zt fields this exporter writes (snake_case); anything else set on a model is refused
_WORKLOAD_FIELDS = {
    "uid", "name", "namespace", "service_account", "trust_domain", "workload_ips", "network",
    "protocol", "node", "status", "services", "authorization_policies", "workload_name",
    "canonical_name", "canonical_revision", "cluster_id", "locality", "hostname", "waypoint",
    "application_tunnel", "netns",
}  # fmt: skip
_SERVICE_FIELDS = {
    "name", "namespace", "hostname", "vips", "ports", "subject_alt_names", "waypoint",
    "load_balancer",
}  # fmt: skip


@dataclass(frozen=True)
class Tagged:
    """A serde enum variant with a value, written `!Kind value`."""

    kind: str
    value: str


def _unknown(model: BaseModel, handled: set[str], at: str, out: Collect) -> None:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if name not in handled and value != field.default:
            out.refuse(f"{at}.{field.alias}", value, "unset: ztunnel export does not know it")


def _dumped(value: BaseModel | None) -> Any:
    """An optional nested model as its YAML mapping (aliases), None when unset."""
    return None if value is None else value.model_dump(by_alias=True, mode="json")


def gateway(g: dict[str, Any]) -> Doc:
    # zt's destination model is one flat mapping: the form is the one whose keys are set
    d = g["destination"]
    if d.get("address") is not None:
        text = f"{d.get('network') or ''}/{d['address']}"
    else:
        text = f"{d['namespace']}/{d['hostname']}"
    return {"destination": text, "hboneMtlsPort": g["hboneMtlsPort"]}


def _put(doc: Doc, key: str, value: object, default: object = "") -> None:
    if value != default:
        doc[key] = value


def workload(w: WorkloadModel, at: str, out: Collect) -> Doc:
    _unknown(w, _WORKLOAD_FIELDS, at, out)
    if w.netns is not None:
        out.note(f"{at}.netns", "not exported: ztunnel is handed each pod's netns by the CNI")
    doc: Doc = {"uid": w.uid, "name": w.name, "namespace": w.namespace,
                "serviceAccount": w.service_account, "trustDomain": w.trust_domain,
                "workloadIps": [str(ip) for ip in w.workload_ips]}  # fmt: skip
    _put(doc, "network", w.network)
    doc["protocol"] = w.protocol
    _put(doc, "node", w.node)
    _put(doc, "status", w.status, "Healthy")
    doc["services"] = {k: dict(v) for k, v in w.services.items()}  # required by ztunnel
    _put(doc, "authorizationPolicies", list(w.authorization_policies), [])
    _put(doc, "workloadName", w.workload_name)
    _put(doc, "canonicalName", w.canonical_name)
    _put(doc, "canonicalRevision", w.canonical_revision)
    _put(doc, "clusterId", w.cluster_id)
    _put(doc, "locality", w.locality.model_dump(), {"region": "", "zone": "", "subzone": ""})
    _put(doc, "hostname", w.hostname)
    waypoint, tunnel = _dumped(w.waypoint), _dumped(w.application_tunnel)
    if waypoint is not None:
        doc["waypoint"] = gateway(waypoint)
    if tunnel is not None:
        doc["applicationTunnel"] = {k: v for k, v in tunnel.items() if v is not None}
    return doc


def service(s: ServiceModel, at: str, out: Collect) -> Doc:
    _unknown(s, _SERVICE_FIELDS, at, out)
    doc: Doc = {"name": s.name, "namespace": s.namespace, "hostname": s.hostname,
                "vips": list(s.vips), "ports": dict(s.ports)}  # fmt: skip
    _put(doc, "subjectAltNames", list(s.subject_alt_names), [])
    waypoint, lb = _dumped(s.waypoint), _dumped(s.load_balancer)
    if waypoint is not None:
        doc["waypoint"] = gateway(waypoint)
    if lb is not None:
        doc["loadBalancer"] = {
            "routingPreferences": [ROUTING_BACK[r] for r in lb["routingPreferences"]],
            "mode": MODES_BACK[lb["mode"]],
            "healthPolicy": HEALTH_BACK[lb["healthPolicy"]],
        }
    return doc


def _pattern(text: str) -> Tagged:
    m = StringMatch.parse(text)
    return Tagged(_KIND_NAMES[m.kind], m.value)


def match(m: MatchModel) -> Doc:
    doc: Doc = {}
    for field, values in m:
        if not values:
            continue
        key = type(m).model_fields[field].alias or field
        if field in ("namespaces", "not_namespaces", "principals", "not_principals"):
            doc[key] = [_pattern(v) for v in values]
        elif field in ("service_accounts", "not_service_accounts"):
            doc[key] = [{"namespace": a.namespace, "serviceAccount": a.service_account}
                        for a in values]  # fmt: skip
        else:
            doc[key] = list(values)
    return doc


def policy(p: PolicyModel) -> Doc:
    return {"name": p.name, "namespace": p.namespace, "scope": p.scope, "action": p.action,
            "rules": [[[match(m) for m in clause] for clause in rule] for rule in p.rules],
            "dryRun": p.dry_run}  # fmt: skip


def to_ztunnel(mesh: MeshFile) -> Imported:
    """The local config ztunnel would read for this mesh; notes and problems as `to_mesh`'s."""
    out = Collect()
    doc: Doc = {
        "workloads": [workload(w, f"workloads[{i}]", out) for i, w in enumerate(mesh.workloads)],
        "policies": [policy(p) for p in mesh.policies],
        "services": [service(s, f"services[{i}]", out) for i, s in enumerate(mesh.services)],
    }
    return Imported(doc, tuple(out.notes), tuple(out.problems))


class _Dumper(yaml.SafeDumper):
    pass


def _represent_tagged(dumper: yaml.SafeDumper, t: Tagged) -> yaml.Node:
    if t.kind == "Presence":
        return dumper.represent_sequence("!Presence", [], flow_style=True)
    return dumper.represent_scalar(f"!{t.kind}", t.value)


_Dumper.add_representer(Tagged, _represent_tagged)


def dump_yaml(doc: Doc) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False)
