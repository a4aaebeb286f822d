"""Inbound decisions for waypoints, pure functions of the snapshot (ztunnel's src/proxy/inbound.rs
validate_destination, find_inbound_upstream and the from_gateway test of build_inbound_request).

- Which CONNECT authorities a pod accepts (`check_authority`): its own address; anything, when
  the pod takes tunnels through an application tunnel (a waypoint reading the target from the
  PROXY header); else an address whose workload or service names this pod as its waypoint (the
  "sandwich": a waypoint behind zt, matching on L7 only). Anything else is a 400.
- Where an accepted tunnel is delivered (`delivery`): always this pod, at the target port, or at
  its applicationTunnel port; with protocol PROXY, a PROXY v2 header names the source, the target
  (for a hostname authority: a VIP of that service, IPv4 first, and the service port) and the
  peer's identity (zt/proxy/proxyv2.py), and the bytes go to the pod's loopback from loopback
  (ztunnel's default LOCALHOST_APP_TUNNEL=true: "app tunnels should only bind to localhost to
  prevent being accessed without going through ztunnel"; the PROXY header keeps the source).
- Whether a tunnel came through a gateway from another network (`from_gateway`): then the source
  address says nothing about a workload here, and telemetry does not look it up. Policy is not
  affected: it always sees the TLS peer's identity and the tunnel's source address, as ztunnel's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from zt.addr import Destination, HostPort, IpAddress, SocketAddr
from zt.errors import H2_CONNECT_ERROR, ZtError
from zt.state.model import Service, TunnelProtocol, Workload
from zt.state.snapshot import Snapshot
from zt.state.waypoint import is_waypoint_of

IPV4_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
IPV6_LOOPBACK = ipaddress.IPv6Address("::1")


class NoServiceAddress(ZtError):
    """A hostname authority for a PROXY tunnel whose service has no VIP to name in the header
    (ztunnel's NoIPForService; inbound upstream errors answer 503)."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "no_service_address"


def _target_of(snapshot: Snapshot, pod: Workload, address: SocketAddr) -> Service | Workload | None:
    """What an authority address names on the pod's network: a workload, else a service VIP
    (ztunnel's find_address)."""
    found = snapshot.workload_at(pod.network, address.ip)
    return found or snapshot.service_by_vip.get((pod.network, address.ip))


def check_authority(snapshot: Snapshot, pod: Workload, authority: SocketAddr) -> str | None:
    """validate_destination for an address authority that reached `pod`: None when accepted,
    else why not (the caller answers 400, authority mismatch)."""
    if authority.ip in pod.ips:
        return None  # "Normal case: both are aligned"
    if pod.application_tunnel is not None:
        # "they will get the HBONE target address in the PROXY header, and their application
        # can decide what to do with it; we don't validate this"
        return None
    target = _target_of(snapshot, pod, authority)
    if target is not None and is_waypoint_of(target, pod, snapshot):
        return None  # the waypoint sandwich: the target names this pod as its waypoint
    return (
        f"{authority} is not an address of pod {pod.uid}, nor of a workload or service that has"
        " it as its waypoint"
    )


@dataclass(frozen=True)
class Delivery:
    """Where an admitted tunnel goes: `dial` (this pod; the application tunnel's port if it has
    one; what policy sees), and for a PROXY tunnel the header's destination (`proxy_target`)."""

    dial: SocketAddr
    protocol: TunnelProtocol | None = None
    proxy_target: SocketAddr | None = None

    @property
    def connect_to(self) -> SocketAddr:
        """The address zt connects to: a PROXY tunnel goes to the pod's loopback, "guess the
        family based on the destination address" (ztunnel's localhost_app_tunnel)."""
        if self.protocol is not TunnelProtocol.PROXY:
            return self.dial
        loopback = IPV4_LOOPBACK if self.dial.ip.version == 4 else IPV6_LOOPBACK
        return SocketAddr(loopback, self.dial.port)


def _service_vip(service: Service, pod: Workload, port: int) -> SocketAddr:
    """ztunnel: a VIP on the pod's network, IPv4 first, else any (PROXY cannot carry a name)."""
    if not service.vips:
        raise NoServiceAddress(f"service {service.key} has no VIP for the PROXY header")
    # Rust's Iterator::max_by_key "returns the last element" of equal maxima: max() over the
    # reversed list picks the same VIP as ztunnel when several tie
    _, ip = max(
        reversed(service.vips),
        key=lambda v: (v[0] == pod.network) * (2 if v[1].version == 4 else 1),
    )
    return SocketAddr(ip, port)


def delivery(
    pod: Workload, resolved: SocketAddr, authority: Destination, service: Service | None
) -> Delivery:
    """find_inbound_upstream after the port is resolved: `resolved` is the pod's address and the
    target port; the application tunnel may move the port. `service`: the one a hostname
    authority named."""
    tunnel = pod.application_tunnel
    if tunnel is None:
        return Delivery(resolved)
    dial = SocketAddr(resolved.ip, tunnel.port or resolved.port)
    if tunnel.protocol is not TunnelProtocol.PROXY:
        return Delivery(dial, tunnel.protocol)
    if isinstance(authority, HostPort):
        target = resolved if service is None else _service_vip(service, pod, authority.port)
    else:
        target = authority
    return Delivery(dial, tunnel.protocol, target)


def inbound_upstream(
    snapshot: Snapshot,
    pod: Workload,
    reached: IpAddress | None,
    target: SocketAddr,
    *,
    authority: Destination,
    service: Service | None = None,
) -> Delivery | str:
    """The whole decision for a tunnel that reached `pod` (at `reached`) for `target` (the
    authority's address, or where a hostname authority resolved to, `service` then its service):
    the Delivery, or why the authority is refused (400)."""
    if target.ip not in pod.ips:
        mismatch = check_authority(snapshot, pod, target)
        if mismatch is not None:
            return mismatch
        # accepted for another address: "We always target the local workload IP as the
        # destination", at the target port
        here = reached if reached in pod.ips else pod.ips[0]
        target = SocketAddr(here, target.port)
    return delivery(pod, target, authority, service)


def from_gateway(forwarded_network: str | None, network: str) -> bool:
    """ztunnel: "If the network is different, it's from a gateway" (x-forwarded-network)."""
    return forwarded_network is not None and forwarded_network.lower() != network.lower()
