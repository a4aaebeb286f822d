"""ztunnel's local config (validated edge model) -> a zt mesh document (docs/config-reference.md).

Pure: returns the document, the notes (a field zt keeps no trace of, whose value here has no
effect zt would miss, or only a telemetry one) and the problems (a field whose value zt cannot
honour: refused, never dropped). The document keeps ztunnel's order, so a problem zt's own
validation finds later has the same path in both files.
"""

from __future__ import annotations

from dataclasses import dataclass

from zt.config.ztunnel import schema as z
from zt.errors import FieldProblem
from zt.state.model import StringMatch as ZtStringMatch
from zt.state.model import StringMatchKind

Doc = dict[str, object]
DEFAULT_TRUST_DOMAIN = "cluster.local"  # what istiod sends for "" (ztunnel's Workload::try_from)
DEFAULT_SERVICE_ACCOUNT = "default"
ROUTING = {"Region": "REGION", "Zone": "ZONE", "Subzone": "SUBZONE", "Node": "NODE",
           "Cluster": "CLUSTER", "Network": "NETWORK"}  # fmt: skip
MODES = {"Standard": "UNSPECIFIED_MODE", "Strict": "STRICT", "Failover": "FAILOVER"}
HEALTH = {"OnlyHealthy": "ONLY_HEALTHY", "AllowAll": "ALLOW_ALL"}
KINDS = {"Exact": StringMatchKind.EXACT, "Prefix": StringMatchKind.PREFIX,
         "Suffix": StringMatchKind.SUFFIX, "Presence": StringMatchKind.PRESENCE}  # fmt: skip


@dataclass(frozen=True)
class Note:
    """A ztunnel field zt does not carry, and why that changes nothing (or only telemetry)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Imported:
    mesh: Doc
    notes: tuple[Note, ...]
    problems: tuple[FieldProblem, ...]


class Collect:
    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.problems: list[FieldProblem] = []

    def refuse(self, path: str, value: object, expected: str) -> None:
        self.problems.append(FieldProblem(path, value, expected))

    def note(self, path: str, message: str) -> None:
        self.notes.append(Note(path, message))


def gateway(g: z.GatewayAddress) -> Doc:
    """ztunnel's `"<network>/<ip>"` or `"<ns>/<hostname>"` text -> zt's tagged mapping."""
    address = z.split_network_address(g.destination)
    if address is not None:
        destination: Doc = {"network": address[0], "address": address[1]}
    else:
        namespace, _, hostname = g.destination.partition("/")
        destination = {"namespace": namespace, "hostname": hostname}
    return {"destination": destination, "hboneMtlsPort": g.hbone_mtls_port}


def _set(doc: Doc, key: str, value: object, default: object = "") -> None:
    if value != default:
        doc[key] = value


def workload(w: z.Workload, at: str, out: Collect) -> Doc:
    _refuse_workload(w, at, out)
    doc: Doc = {"uid": w.uid, "name": w.name, "namespace": w.namespace}
    _set(
        doc, "serviceAccount", w.service_account or DEFAULT_SERVICE_ACCOUNT, DEFAULT_SERVICE_ACCOUNT
    )
    _set(doc, "trustDomain", w.trust_domain or DEFAULT_TRUST_DOMAIN, DEFAULT_TRUST_DOMAIN)
    doc["workloadIps"] = [str(ip) for ip in w.workload_ips]
    _set(doc, "network", w.network)
    doc["protocol"] = w.protocol
    _set(doc, "node", w.node)
    _set(doc, "status", w.status, "Healthy")
    _set(doc, "services", {k: dict(v) for k, v in w.services.items()}, {})
    _set(doc, "authorizationPolicies", list(w.authorization_policies), [])
    for key in ("workloadName", "canonicalName", "canonicalRevision", "clusterId", "hostname"):
        _set(doc, key, getattr(w, _snake(key)))
    if w.locality is not None:
        _set(doc, "locality", w.locality.model_dump(), {"region": "", "zone": "", "subzone": ""})
    if w.waypoint is not None:
        doc["waypoint"] = gateway(w.waypoint)
    if w.application_tunnel is not None:
        doc["applicationTunnel"] = w.application_tunnel.model_dump(exclude_none=True)
    return doc


def _refuse_workload(w: z.Workload, at: str, out: Collect) -> None:
    if not w.uid:
        out.refuse(f"{at}.uid", w.uid, "a uid (zt keys workloads by it; istiod always sends one)")
    if not w.name:
        out.refuse(f"{at}.name", w.name, "a name (zt's workloads have one)")
    if w.network_gateway is not None:
        out.refuse(f"{at}.networkGateway", w.network_gateway.destination,
                   "none: zt has no east-west gateway (docs/config-reference.md)")  # fmt: skip
    if w.network_mode != "Standard":
        out.refuse(f"{at}.networkMode", w.network_mode, "Standard: zt captures pod namespaces only")
    if w.native_tunnel:
        out.refuse(f"{at}.nativeTunnel", True, "false: zt always tunnels in HBONE to port 15008")
    if w.workload_type:
        out.note(f"{at}.workloadType", f"{w.workload_type!r} not carried: zt's baggage header "
                 "names no workload type")  # fmt: skip
    if w.capacity != 1:
        out.refuse(f"{at}.capacity", w.capacity, "1: zt weighs every endpoint alike")


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def service(s: z.Service, at: str, shared: bool, out: Collect) -> Doc:
    _refuse_service(s, at, out)
    if s.canonical and shared:
        out.refuse(f"{at}.canonical", True, "false, or a hostname no other namespace's service "
                   "has: zt prefers the client's namespace, never a canonical service")  # fmt: skip
    if s.canonical and not shared:
        out.note(f"{at}.canonical", "not carried: no other service has this hostname, so there is "
                 "no choice for it to settle")  # fmt: skip
    doc: Doc = {"name": s.name, "namespace": s.namespace, "hostname": s.hostname,
                "vips": list(s.vips), "ports": dict(s.ports)}  # fmt: skip
    _set(doc, "subjectAltNames", list(s.subject_alt_names), [])
    if s.waypoint is not None:
        doc["waypoint"] = gateway(s.waypoint)
    if s.load_balancer is not None:
        doc["loadBalancer"] = _load_balancer(s.load_balancer, f"{at}.loadBalancer", out)
    return doc


def _load_balancer(lb: z.LoadBalancer, at: str, out: Collect) -> Doc:
    if lb.mode not in MODES:
        out.refuse(f"{at}.mode", lb.mode, f"one of {sorted(MODES)}: zt always picks an endpoint")
    return {
        "routingPreferences": [ROUTING[r] for r in lb.routing_preferences],
        "mode": MODES.get(lb.mode, lb.mode),
        "healthPolicy": HEALTH[lb.health_policy],
    }


def _refuse_service(s: z.Service, at: str, out: Collect) -> None:
    unsupported: tuple[tuple[str, object, object, str], ...] = (
        ("cidrVips", s.cidr_vips, [], "[]: zt's VIPs are single addresses"),
        ("endpoints", s.endpoints, {}, "{}: list the service in each workload's `services`"),
        ("weightedWaypoints", s.weighted_waypoints, [], "[]: zt sends to one waypoint"),
        ("ipFamilies", s.ip_families, None, "none: zt serves every VIP family given"),
        ("visibility", s.visibility, "Public", "Public: zt shows services to every namespace"),
    )
    for key, value, default, expected in unsupported:
        if value != default:
            out.refuse(f"{at}.{key}", value, expected)


def string_match(m: z.StringMatch, at: str, out: Collect) -> str:
    """ztunnel's tagged StringMatch -> zt's Istio pattern text, refused when the text would read
    back as another match (`!Exact "a*"` would become a prefix)."""
    wanted = ZtStringMatch(KINDS[m.kind], m.value)
    text = str(wanted)
    if ZtStringMatch.parse(text) != wanted:
        out.refuse(at, {m.kind: m.value}, "a value zt's pattern text can carry: no '*' at an end "
                   "of an Exact, none in a Suffix, a non-empty Prefix or Suffix")  # fmt: skip
    return text


def match(m: z.Match, at: str, out: Collect) -> Doc:
    doc: Doc = {}
    for field, values in m:
        if not values:
            continue
        key = _camel(field)
        if field in ("namespaces", "not_namespaces", "principals", "not_principals"):
            doc[key] = [string_match(v, f"{at}.{key}[{i}]", out) for i, v in enumerate(values)]
        elif field in ("service_accounts", "not_service_accounts"):
            doc[key] = [{"namespace": a.namespace, "serviceAccount": a.service_account}
                        for a in values]  # fmt: skip
        else:
            doc[key] = list(values)
    return doc


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


def policy(p: z.Authorization, at: str, out: Collect) -> Doc:
    rules = [
        [
            [match(m, f"{at}.rules[{r}][{c}][{k}]", out) for k, m in enumerate(clause)]
            for c, clause in enumerate(rule)
        ]
        for r, rule in enumerate(p.rules)
    ]
    return {"name": p.name, "namespace": p.namespace, "scope": p.scope, "action": p.action,
            "dryRun": p.dry_run, "rules": rules}  # fmt: skip


def to_mesh(config: z.LocalConfig) -> Imported:
    out = Collect()
    namespaces: dict[str, set[str]] = {}
    for s in config.services:
        namespaces.setdefault(s.hostname, set()).add(s.namespace)
    mesh: Doc = {
        "workloads": [workload(w, f"workloads[{i}]", out) for i, w in enumerate(config.workloads)],
        "services": [
            service(s, f"services[{i}]", len(namespaces[s.hostname]) > 1, out)
            for i, s in enumerate(config.services)
        ],
        "policies": [policy(p, f"policies[{i}]", out) for i, p in enumerate(config.policies)],
    }
    return Imported(mesh, tuple(out.notes), tuple(out.problems))
