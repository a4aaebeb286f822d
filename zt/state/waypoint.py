"""Waypoints in the snapshot: what a GatewayAddress names, which pod a tunnel through it goes to,
and whether a workload is (one of) that waypoint. Pure functions of the snapshot, following
ztunnel's src/state.rs (find_destination, fetch_waypoint) and src/proxy.rs
(check_gateway_address); used by outbound `route()` and the inbound `admit` (docs/design.md §5).

A GatewayAddress names either an address (a waypoint workload's own address, else a VIP of the
waypoint's service: the workload wins, as ztunnel's find_address) or a namespace/hostname (a
service, else a workload with that hostname in that namespace: ztunnel's find_hostname).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zt.addr import SocketAddr
from zt.errors import ZtError
from zt.state.endpoints import pick
from zt.state.model import GatewayAddress, NetworkAddress, Service, Workload
from zt.state.snapshot import Snapshot


class WaypointMissing(ZtError):
    """A waypoint that names nothing in the snapshot, or a service without a usable endpoint
    (ztunnel's UnknownWaypoint). Outbound, the connection is refused."""

    http_status = 503
    reason = "unknown_waypoint"


@dataclass(frozen=True)
class WaypointHop:
    """Where a tunnel through a waypoint goes: the pod, its address and port, the extra SANs it
    may present (its service's), and the waypoint's name for logs (service key or workload uid)."""

    workload: Workload
    address: SocketAddr
    sans: tuple[str, ...]
    name: str


def find(gateway: GatewayAddress, snapshot: Snapshot) -> Service | Workload | None:
    """What the gateway address names (ztunnel's find_destination)."""
    d = gateway.destination
    if isinstance(d, NetworkAddress):
        found = snapshot.workload_at(d.network, d.address)
        return found or snapshot.service_by_vip.get((d.network, d.address))
    service = snapshot.service_by_key.get(d.key)
    if service is not None:
        return service
    # the uncommon path, a linear scan as in ztunnel (which does not index it either)
    return next(
        (w for w in snapshot.workloads if w.hostname == d.hostname and w.namespace == d.namespace),
        None,
    )


def members(gateway: GatewayAddress, snapshot: Snapshot) -> tuple[Workload, ...]:
    """Every workload the gateway address stands for: the one it names, or its service's
    endpoints (healthy or not: a waypoint pod is one whatever its health)."""
    found = find(gateway, snapshot)
    if found is None:
        return ()
    if isinstance(found, Workload):
        return (found,)
    return snapshot.endpoints.get(found.key, ())


def from_waypoint(gateway: GatewayAddress, source: Workload, snapshot: Snapshot) -> bool:
    """ztunnel's check_from_waypoint: the source carries the identity of one of the waypoint's
    workloads and sends from one of its addresses."""
    return any(
        w.identity == source.identity and set(w.ips) & set(source.ips)
        for w in members(gateway, snapshot)
    )


def _endpoint_port(service: Service, endpoint: Workload, port: int) -> int:
    """The port a waypoint endpoint takes the service's `port` (the hboneMtlsPort) on: its own
    mapping, else the service's, else (with an application tunnel of its own port) the port
    itself, as ztunnel's find_upstream_from_service in waypoint mode; 0: none."""
    own = endpoint.services.get(service.key, {}).get(port, 0)
    mapped = own or service.ports.get(port, 0)
    if mapped:
        return mapped
    tunnel = endpoint.application_tunnel
    return port if tunnel is not None and tunnel.port is not None else 0


def waypoint_hop(
    gateway: GatewayAddress, dst: SocketAddr, source: Workload, snapshot: Snapshot, seed: int
) -> WaypointHop:
    """Where to send `source`'s connection to `dst` through the waypoint (fetch_waypoint). An
    address names the family of the hop (its own); a hostname adapts to `dst`'s family."""
    found = find(gateway, snapshot)
    port = gateway.hbone_mtls_port
    d = gateway.destination
    like = d.address if isinstance(d, NetworkAddress) else dst.ip
    if found is None:
        raise WaypointMissing(f"waypoint {gateway.destination} not found")
    if isinstance(found, Workload):
        if not found.ips:
            raise WaypointMissing(f"waypoint workload {found.uid} has no address")
        hop = SocketAddr(found.address_like(like), port)
        return WaypointHop(found, hop, (), found.uid)
    waypoint = found

    def usable(w: Workload) -> bool:  # reachable without a gateway, and taking the HBONE port
        return (
            bool(w.ips) and w.network == source.network and bool(_endpoint_port(waypoint, w, port))
        )

    # the waypoint service's own health policy and locality, as for any service (ztunnel's
    # fetch_waypoint -> find_upstream_from_service -> load_balance)
    rng = random.Random(f"{seed}/{source.uid}/{dst}/waypoint")
    chosen = pick(waypoint, snapshot.endpoints.get(waypoint.key, ()), source, rng, usable)
    if chosen is None:
        raise WaypointMissing(f"waypoint service {found.key} has no healthy endpoint for {port}")
    hop = SocketAddr(chosen.address_like(like), _endpoint_port(waypoint, chosen, port))
    return WaypointHop(chosen, hop, found.subject_alt_names, found.key)


def is_waypoint_of(target: Service | Workload, pod: Workload, snapshot: Snapshot) -> bool:
    """Whether `pod` is the waypoint `target` names (inbound's sandwich check,
    validate_destination): the waypoint's service lists it as an endpoint, or it is the waypoint
    workload."""
    gateway = target.waypoint
    if gateway is None:
        return False
    found = find(gateway, snapshot)
    if isinstance(found, Service):
        # by uid: `pod` may be the node's copy of an entry since edited in place
        return any(w.uid == pod.uid for w in snapshot.endpoints.get(found.key, ()))
    return found is not None and found.uid == pod.uid
