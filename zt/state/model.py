"""Frozen domain objects of the mesh: what the data path sees (never pydantic).

Field meanings follow docs/design.md §4 (a ztunnel-shaped local config).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from zt.addr import IpAddress

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Protocol(enum.Enum):
    HBONE = "HBONE"
    TCP = "TCP"


class Health(enum.Enum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


class Scope(enum.Enum):
    GLOBAL = "Global"
    NAMESPACE = "Namespace"
    WORKLOAD_SELECTOR = "WorkloadSelector"


class Action(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"


def frozen_map(items: Mapping[str, Mapping[int, int]]) -> Mapping[str, Mapping[int, int]]:
    """A read-only copy of a two-level mapping (dataclass(frozen) does not freeze dict fields)."""
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in items.items()})


@dataclass(frozen=True)
class Locality:
    """Where a workload runs (ztunnel's Locality); region and zone label istio_tcp_* metrics."""

    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    trust_domain: str
    ips: tuple[IpAddress, ...]
    network: str
    protocol: Protocol
    node: str
    netns: str | None
    status: Health
    # "<ns>/<hostname>" -> {service port: target port}
    services: Mapping[str, Mapping[int, int]] = field(default_factory=lambda: frozen_map({}))
    # "<ns>/<name>" of WorkloadSelector-scoped policies that select this workload
    authorization_policies: tuple[str, ...] = ()
    # Telemetry names as ztunnel's Workload carries them (istio_tcp_* labels): the workload
    # (e.g. Deployment) this instance belongs to, its canonical service and revision (which also
    # fill the app and version labels), its cluster and locality. "" reads "unknown" in labels.
    workload_name: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    cluster_id: str = ""
    locality: Locality = field(default_factory=Locality)
    # A DNS name resolving to this workload's addresses (ztunnel's Workload.hostname; "": none),
    # served by the DNS proxy (docs/dns.md).
    hostname: str = ""
    # The waypoint this workload's inbound traffic goes through (None: none), and how zt delivers
    # tunnels to this workload when it is itself a waypoint (None: plain TCP to the target port).
    waypoint: GatewayAddress | None = None
    application_tunnel: ApplicationTunnel | None = None

    @property
    def identity(self) -> str:
        """The SPIFFE id this workload's certificate carries."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def healthy(self) -> bool:
        return self.status is Health.HEALTHY

    def address_like(self, like: IpAddress) -> IpAddress:
        """`like` itself if this workload has it, else its first address of `like`'s family, else
        its first (ztunnel's pick_workload_destination_or_resolve). Needs at least one address."""
        if like in self.ips:
            return like
        return next((ip for ip in self.ips if ip.version == like.version), self.ips[0])


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[tuple[str, IpAddress], ...]  # (network, ip)
    ports: Mapping[int, int]  # service port -> target port (0: the endpoint's own mapping decides)
    subject_alt_names: tuple[str, ...] = ()
    # The waypoint traffic to this service's VIPs goes through (None: none).
    waypoint: GatewayAddress | None = None
    # how endpoints are picked (locality, health): zt/state/endpoints.py; None: any healthy one
    load_balancer: LoadBalancer | None = None

    @property
    def key(self) -> str:
        """How workloads refer to this service: `<namespace>/<hostname>`."""
        return f"{self.namespace}/{self.hostname}"


class StringMatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True)
class StringMatch:
    """Istio AuthorizationPolicy string matching: "exact", "prefix*", "*suffix", "*"."""

    kind: StringMatchKind
    value: str

    @classmethod
    def parse(cls, text: str) -> StringMatch:
        if text == "*":
            return cls(StringMatchKind.PRESENCE, "")
        if text.endswith("*"):
            return cls(StringMatchKind.PREFIX, text[:-1])
        if text.startswith("*"):
            return cls(StringMatchKind.SUFFIX, text[1:])
        return cls(StringMatchKind.EXACT, text)

    def matches(self, candidate: str) -> bool:
        if self.kind is StringMatchKind.PRESENCE:
            return candidate != ""
        if self.kind is StringMatchKind.PREFIX:
            return candidate.startswith(self.value)
        if self.kind is StringMatchKind.SUFFIX:
            return candidate.endswith(self.value)
        return candidate == self.value

    def __str__(self) -> str:
        return {
            StringMatchKind.PRESENCE: "*",
            StringMatchKind.PREFIX: f"{self.value}*",
            StringMatchKind.SUFFIX: f"*{self.value}",
            StringMatchKind.EXACT: self.value,
        }[self.kind]


@dataclass(frozen=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str


@dataclass(frozen=True)
class Match:
    """One match: every non-empty field must hold (AND), any value within a field may (OR)."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    source_ips: tuple[IpNetwork, ...] = ()
    not_source_ips: tuple[IpNetwork, ...] = ()
    destination_ips: tuple[IpNetwork, ...] = ()
    not_destination_ips: tuple[IpNetwork, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    @property
    def uses_identity(self) -> bool:
        return bool(
            self.namespaces
            or self.not_namespaces
            or self.principals
            or self.not_principals
            or self.service_accounts
            or self.not_service_accounts
        )


Clause = tuple[Match, ...]  # matches: OR
Rule = tuple[Clause, ...]  # clauses: AND


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    scope: Scope
    action: Action
    dry_run: bool
    rules: tuple[Rule, ...]  # rules: OR

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- Waypoints and application tunnels (ztunnel's src/state/workload.rs GatewayAddress and
# ApplicationTunnel). A destination that names a waypoint is reached through it (docs/design.md §5).


class TunnelProtocol(enum.Enum):
    """How zt hands a tunnel's bytes to a workload that asked for an application tunnel: NONE as
    they are, PROXY behind a PROXY protocol v2 header (zt/proxy/proxyv2.py)."""

    NONE = "NONE"
    PROXY = "PROXY"


@dataclass(frozen=True)
class NetworkAddress:
    """An address on a network: a workload's IP or a service VIP."""

    network: str
    address: IpAddress

    def __str__(self) -> str:
        return f"{self.network}/{self.address}"


@dataclass(frozen=True)
class NamespacedHostname:
    """A service named by namespace and hostname (the snapshot's `service_by_key`)."""

    namespace: str
    hostname: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class GatewayAddress:
    """Where a waypoint (or gateway) is: an address (of its workload, or a VIP of its service) or
    a service hostname, and the port its HBONE listener takes (ztunnel's hbone_mtls_port)."""

    destination: NetworkAddress | NamespacedHostname
    hbone_mtls_port: int = 15008

    def __str__(self) -> str:
        return f"{self.destination}:{self.hbone_mtls_port}"


@dataclass(frozen=True)
class ApplicationTunnel:
    """A workload (a waypoint, typically) that takes its inbound tunnels on `port` (None: the
    target port, as ztunnel's `port.unwrap_or(dest.port())`) in `protocol`."""

    protocol: TunnelProtocol
    port: int | None = None


# -- load balancing (ztunnel's LoadBalancer, src/state/service.rs) ------------------------------


class LoadBalancerScope(enum.Enum):
    """What an endpoint may share with the source (Istio's workload API LoadBalancing.Scope)."""

    NETWORK = "NETWORK"
    REGION = "REGION"
    ZONE = "ZONE"
    SUBZONE = "SUBZONE"
    NODE = "NODE"
    CLUSTER = "CLUSTER"


class LoadBalancerMode(enum.Enum):
    """UNSPECIFIED_MODE: scopes are ignored; FAILOVER: the endpoints matching the most leading
    scopes win, others only when none does; STRICT: only endpoints matching every scope."""

    UNSPECIFIED_MODE = "UNSPECIFIED_MODE"
    FAILOVER = "FAILOVER"
    STRICT = "STRICT"


class HealthPolicy(enum.Enum):
    """ONLY_HEALTHY: unhealthy endpoints are never picked; ALLOW_ALL: they are."""

    ONLY_HEALTHY = "ONLY_HEALTHY"
    ALLOW_ALL = "ALLOW_ALL"


@dataclass(frozen=True)
class LoadBalancer:
    routing_preferences: tuple[LoadBalancerScope, ...] = ()
    mode: LoadBalancerMode = LoadBalancerMode.UNSPECIFIED_MODE
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY
