"""Which endpoint of a service a source's connection goes to: health and locality, as ztunnel's
`load_balance` (its src/state.rs) decides, a pure function of the service, its endpoints and
the source.

- Health (the service's `healthPolicy`): ONLY_HEALTHY (and no load balancer at all) leaves
  unhealthy endpoints out; ALLOW_ALL keeps them (ztunnel's `should_include_endpoint`).
- Locality (`routingPreferences`, `mode`): an endpoint's rank is how many of the preferences,
  in order, it shares with the source, stopping at the first it does not. FAILOVER picks among
  the endpoints of the highest rank, so the nearest ones take all traffic while any is left and
  the next tier takes over when none is. STRICT takes only endpoints that share every preference:
  none left is no route. UNSPECIFIED_MODE ignores the preferences.
- NETWORK first in the preferences (ztunnel's `network_preferred`): an endpoint on the source's
  network outranks every endpoint elsewhere, whatever the other scopes say; elsewhere the other
  scopes still rank. zt reaches only endpoints on the source's network (it has no network
  gateways), so callers filter those first and NETWORK always matches here; it is kept for
  parity.

Among the chosen tier one endpoint is drawn uniformly (ztunnel weighs by capacity, which zt's
model does not carry) from the caller's seeded random source, so a decision is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence

from zt.state.model import (
    HealthPolicy,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Service,
    Workload,
)


def included(service: Service, endpoint: Workload) -> bool:
    """May `endpoint` be picked at all, by its health (ztunnel's should_include_endpoint)."""
    lb = service.load_balancer
    return endpoint.healthy or (lb is not None and lb.health_policy is HealthPolicy.ALLOW_ALL)


def _shares(scope: LoadBalancerScope, source: Workload, endpoint: Workload) -> bool:
    if scope is LoadBalancerScope.NETWORK:
        return source.network == endpoint.network
    if scope is LoadBalancerScope.REGION:
        return source.locality.region == endpoint.locality.region
    if scope is LoadBalancerScope.ZONE:
        return source.locality.zone == endpoint.locality.zone
    if scope is LoadBalancerScope.SUBZONE:
        return source.locality.subzone == endpoint.locality.subzone
    if scope is LoadBalancerScope.NODE:
        return source.node == endpoint.node
    return source.cluster_id == endpoint.cluster_id  # CLUSTER


def rank(lb: LoadBalancer, source: Workload, endpoint: Workload) -> int | None:
    """`endpoint`'s rank for `source` (higher is nearer); None when STRICT excludes it."""
    prefs = lb.routing_preferences
    network_first = bool(prefs) and prefs[0] is LoadBalancerScope.NETWORK
    matched = 0
    bonus = 0
    for i, scope in enumerate(prefs):
        shares = _shares(scope, source, endpoint)
        if i == 0 and network_first and not shares:
            continue  # another network: ranked by the remaining scopes, below any same network
        if not shares:
            break
        matched += 1
        if i == 0 and network_first:
            bonus = len(prefs) - 1  # above every endpoint on another network
    if lb.mode is LoadBalancerMode.STRICT and matched != len(prefs):
        return None
    return matched + bonus


def nearest(service: Service, endpoints: Iterable[Workload], source: Workload) -> list[Workload]:
    """The endpoints `source` may go to: health first, then the best locality tier (all of them
    without a load balancer or with UNSPECIFIED_MODE), in the order given."""
    usable = [w for w in endpoints if included(service, w)]
    lb = service.load_balancer
    if lb is None or lb.mode is LoadBalancerMode.UNSPECIFIED_MODE or not usable:
        return usable
    ranked = [(r, w) for w in usable if (r := rank(lb, source, w)) is not None]
    if not ranked:
        return []
    best = max(r for r, _ in ranked)
    return [w for r, w in ranked if r == best]


def strict_note(service: Service) -> str:
    """For a refusal's reason: what a STRICT load balancer demanded ("" otherwise)."""
    lb = service.load_balancer
    if lb is None or lb.mode is not LoadBalancerMode.STRICT:
        return ""
    scopes = ", ".join(s.value for s in lb.routing_preferences)
    return f" sharing {scopes} with the source (load balancer STRICT)"


def pick(
    service: Service,
    endpoints: Sequence[Workload],
    source: Workload,
    rng: random.Random,
    usable: Callable[[Workload], bool] = lambda w: True,
) -> Workload | None:
    """One endpoint for `source`: among those `usable` says can carry the connection (an
    address on the source's network, a target port for the asked port; filtered first, as
    ztunnel does, so a near endpoint that cannot serve never hides a farther one that can),
    the nearest allowed (`nearest`), drawn from `rng`. None: no endpoint qualifies."""
    options = nearest(service, (w for w in endpoints if usable(w)), source)
    return rng.choice(options) if options else None
