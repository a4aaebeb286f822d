"""Outbound routing: a pure function of (original destination, source workload, snapshot) (§5).

It returns data; the proxy acts on it. Service VIP -> a healthy endpoint (deterministic for a seed)
with the service port translated to the target port; an HBONE workload -> a tunnel to
`<pod ip>:15008` with authority `<pod ip>:<target port>`; a TCP workload -> plain TCP; an address
outside the mesh -> passthrough. A destination that names a waypoint (a service VIP whose service
has one, a workload addressed by its own IP that has one) is tunnelled to the waypoint instead,
with the original destination as the authority (zt/state/waypoint.py). The loop guard
(zt/state/loopguard.py) refuses zt's own ports, but only on loopback and on zt's own addresses
(the pods this node serves), as ztunnel does: another host's :15008 as an app destination is
carried like any port (its inbound answers 400).
"""

from __future__ import annotations

import dataclasses
import enum
import random
from dataclasses import dataclass

from zt.addr import IpAddress, SocketAddr
from zt.state.endpoints import pick, strict_note
from zt.state.loopguard import DEFAULT_ILLEGAL_PORTS, check_outbound
from zt.state.model import GatewayAddress, Protocol, Service, Workload
from zt.state.snapshot import Snapshot
from zt.state.waypoint import WaypointMissing, from_waypoint, waypoint_hop

HBONE_PORT = 15008


class RouteKind(enum.Enum):
    HBONE = "hbone"
    TCP = "tcp"
    PASSTHROUGH = "passthrough"
    REFUSED = "refused"


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    next_hop: SocketAddr | None
    authority: SocketAddr | None
    expected_identities: tuple[str, ...]
    reason: str
    destination_workload: str | None = None  # uid
    service: str | None = None  # "<ns>/<hostname>"
    loop_guard: bool = False  # REFUSED because the destination is zt itself
    # the waypoint the route goes through (its service key, or its workload's uid); None: none
    waypoint: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "next_hop": None if self.next_hop is None else str(self.next_hop),
            "authority": None if self.authority is None else str(self.authority),
            "expected_identities": list(self.expected_identities),
            "reason": self.reason,
            "destination_workload": self.destination_workload,
            "service": self.service,
            "waypoint": self.waypoint,
        }


def _refused(reason: str, service: str | None = None, *, loop_guard: bool = False) -> Route:
    return Route(RouteKind.REFUSED, None, None, (), reason, service=service, loop_guard=loop_guard)


def _to_workload(
    w: Workload, ip: IpAddress, port: int, reason: str, extra_sans: tuple[str, ...] = ()
) -> Route:
    target = SocketAddr(ip, port)
    if w.protocol is Protocol.HBONE:
        sans = (w.identity, *(s for s in extra_sans if s != w.identity))
        return Route(RouteKind.HBONE, SocketAddr(ip, HBONE_PORT), target, sans, reason, w.uid)
    return Route(RouteKind.TCP, target, None, (), reason, w.uid)


def target_port(service: Service, endpoint: Workload, service_port: int) -> int:
    """The endpoint's own mapping wins; else the service's; 0 means nothing maps it."""
    own = endpoint.services.get(service.key, {}).get(service_port, 0)
    return own or service.ports.get(service_port, 0)


def _via_service(
    service: Service, dst: SocketAddr, source: Workload, snapshot: Snapshot, seed: int
) -> Route:
    key = service.key
    if dst.port not in service.ports:
        return _refused(f"service {key} has no port {dst.port}", key)

    def usable(w: Workload) -> bool:  # reachable without a gateway, and serving this port
        return (
            bool(w.ips) and w.network == source.network and bool(target_port(service, w, dst.port))
        )

    # health and locality (the service's load balancer): zt/state/endpoints.py
    rng = random.Random(f"{seed}/{source.uid}/{dst}")
    endpoint = pick(service, snapshot.endpoints.get(key, ()), source, rng, usable)
    if endpoint is None:
        why = f"service {key} has no healthy endpoint for port {dst.port}"
        return _refused(why + strict_note(service), key)
    port = target_port(service, endpoint, dst.port)
    reason = f"service {key} port {dst.port} -> endpoint {endpoint.uid} port {port}"
    chosen = _to_workload(
        endpoint, endpoint.address_like(dst.ip), port, reason, service.subject_alt_names
    )
    return dataclasses.replace(chosen, service=key)


def route(
    original_destination: SocketAddr,
    source: Workload,
    snapshot: Snapshot,
    *,
    seed: int = 0,
    own_ips: frozenset[IpAddress] = frozenset(),
    illegal_ports: frozenset[int] = DEFAULT_ILLEGAL_PORTS,
) -> Route:
    """Decide how the source workload's connection to `original_destination` leaves the node.

    `own_ips`: the addresses zt listens on (the IPs of the pods this node serves); with loopback,
    the only places where `illegal_ports` are refused."""
    dst = original_destination
    refusal = check_outbound(dst, own_ips, illegal_ports)
    if refusal is not None:
        return _refused(str(refusal), loop_guard=True)
    decided = _decide(dst, source, snapshot, seed)
    # A service may translate its port to one of zt's on a pod of this node: check where it lands
    # (for HBONE the authority; the next hop is then the pod's :15008, which is meant).
    final = decided.authority or decided.next_hop
    refusal = None if final is None else check_outbound(final, own_ips, illegal_ports)
    if refusal is not None:
        return _refused(str(refusal), decided.service, loop_guard=True)
    return decided


def _decide(dst: SocketAddr, source: Workload, snapshot: Snapshot, seed: int) -> Route:
    # ztunnel's build_request: a service's waypoint first (service-addressed traffic never takes
    # an endpoint's own waypoint), then a workload's, unless the source is that waypoint itself
    # (check_from_waypoint: else the waypoint's own connection would come back to it).
    service = snapshot.service_by_vip.get((source.network, dst.ip))
    if service is not None:
        if service.waypoint is not None and not from_waypoint(service.waypoint, source, snapshot):
            routed = _via_waypoint(
                service.waypoint,
                f"service {service.key}",
                dst=dst,
                source=source,
                snapshot=snapshot,
                seed=seed,
            )
            return dataclasses.replace(routed, service=service.key)
        return _via_service(service, dst, source, snapshot, seed)
    workload = snapshot.workload_at(source.network, dst.ip)
    if workload is not None:
        if workload.waypoint is not None and not from_waypoint(workload.waypoint, source, snapshot):
            what = f"workload {workload.uid}"
            return _via_waypoint(
                workload.waypoint, what, dst=dst, source=source, snapshot=snapshot, seed=seed
            )
        return _to_workload(workload, dst.ip, dst.port, f"workload {workload.uid}")
    return Route(RouteKind.PASSTHROUGH, dst, None, (), f"{dst.ip} is not in the mesh")


def _via_waypoint(
    gateway: GatewayAddress,
    what: str,
    *,
    dst: SocketAddr,
    source: Workload,
    snapshot: Snapshot,
    seed: int,
) -> Route:
    """Always HBONE to the waypoint's pod at its hboneMtlsPort, the original destination (VIP or
    pod address, untranslated) as the authority, the waypoint's identity expected."""
    try:
        hop = waypoint_hop(gateway, dst, source, snapshot, seed)
    except WaypointMissing as exc:
        return _refused(f"{what}: {exc}")
    reason = f"{what} -> waypoint {hop.name} ({hop.workload.uid} at {hop.address})"
    sans = (hop.workload.identity, *(s for s in hop.sans if s != hop.workload.identity))
    return Route(
        RouteKind.HBONE, hop.address, dst, sans, reason, hop.workload.uid, waypoint=hop.name
    )
