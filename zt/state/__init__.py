"""The mesh's state: frozen domain objects, the indexed snapshot, and the pure decisions on it."""

from zt.state.authz import Connection, Decision, authorize
from zt.state.hostnames import (
    HostnameUnroutable,
    Resolved,
    UnknownHostname,
    find_name,
    lookup_hostname,
    resolve,
    resolve_inbound,
)
from zt.state.loopguard import (
    DEFAULT_ILLEGAL_PORTS,
    AllowList,
    AllowRule,
    DestinationNotAllowed,
    LoopGuardRefused,
    Refusal,
    StandaloneGuard,
    check_inbound,
    check_outbound,
    illegal_ports,
    own_ips,
    parse_allow,
)
from zt.state.model import Action, Health, Policy, Protocol, Scope, Service, Workload
from zt.state.names import MeshNames, mesh_names
from zt.state.route import Route, RouteKind, route
from zt.state.snapshot import EMPTY_SNAPSHOT, Snapshot

__all__ = [
    "DEFAULT_ILLEGAL_PORTS",
    "EMPTY_SNAPSHOT",
    "Action",
    "AllowList",
    "AllowRule",
    "Connection",
    "Decision",
    "DestinationNotAllowed",
    "Health",
    "HostnameUnroutable",
    "LoopGuardRefused",
    "MeshNames",
    "Policy",
    "Protocol",
    "Refusal",
    "Resolved",
    "Route",
    "RouteKind",
    "Scope",
    "Service",
    "Snapshot",
    "StandaloneGuard",
    "UnknownHostname",
    "Workload",
    "authorize",
    "check_inbound",
    "check_outbound",
    "find_name",
    "illegal_ports",
    "lookup_hostname",
    "mesh_names",
    "own_ips",
    "parse_allow",
    "resolve",
    "resolve_inbound",
    "route",
]
