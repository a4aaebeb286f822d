"""The mesh's state: frozen domain objects, the indexed snapshot, and the pure decisions on it."""

from zt.state.authz import Connection, Decision, authorize
from zt.state.model import Action, Health, Policy, Protocol, Scope, Service, Workload
from zt.state.route import Route, RouteKind, route
from zt.state.snapshot import EMPTY_SNAPSHOT, Snapshot

__all__ = [
    "EMPTY_SNAPSHOT",
    "Action",
    "Connection",
    "Decision",
    "Health",
    "Policy",
    "Protocol",
    "Route",
    "RouteKind",
    "Scope",
    "Service",
    "Snapshot",
    "Workload",
    "authorize",
    "route",
]
