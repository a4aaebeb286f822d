"""Mesh hostnames where zt takes a destination: pure functions of the snapshot.

Outbound (`zt route --dst name:port`, SOCKS5 with a domain name), `resolve()` turns a name into the
address `route()` is given, as ztunnel's DNS proxy would have answered the app:

- a service with VIPs on the source's network: one of them (IPv4 first, as ztunnel picks a VIP
  for a hostname), the port unchanged: `route()` then maps the service port to a target port;
- a service without VIPs (Kubernetes "headless"): ztunnel's DNS answers with the endpoints' own
  addresses (`dns/server.rs` get_addresses: "Headless service. Use the endpoint IPs."), so zt picks
  one healthy endpoint on the source's network; the port is unchanged, as a client of a headless
  service dials the pod's port itself.

Inbound (an HBONE `:authority` naming a service, docs/design.md §2), `resolve_inbound()` does what
ztunnel's `find_inbound_upstream` does since it accepts hostname authorities: the tunnel goes to the
pod the connection reached, and the service port becomes the target port (the pod's own mapping
first, else the service's); a name no service has, or a port it does not map, is a 503.

Every name is looked up by `lookup_hostname()`, the one place a mesh hostname becomes a mesh object.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zt.addr import HostPort, IpAddress, SocketAddr
from zt.errors import H2_CONNECT_ERROR, ZtError
from zt.state.model import Service, Workload
from zt.state.route import target_port
from zt.state.snapshot import Snapshot

# Kubernetes' default cluster domain: `<svc>.<ns>.svc.cluster.local`.
CLUSTER_DOMAIN = "cluster.local"


class UnknownHostname(ZtError):
    """No service of the mesh has this hostname. 503, as ztunnel answers a CONNECT to a hostname
    it cannot find (its NoHostname error: a destination it does not know, not a bad request)."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "unknown_hostname"
    exit_code = 2


class HostnameUnroutable(ZtError):
    """The hostname is a service's, but nothing it names can be reached from here: no VIP on the
    source's network and no healthy endpoint, or (inbound) no target port for that service port.
    503, as ztunnel's NoPortForServices and NoIPForService."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "hostname_unroutable"
    exit_code = 2


@dataclass(frozen=True)
class Resolved:
    """A name and where it leads: `destination` is what the flow dials or `route()` is given."""

    name: HostPort
    destination: SocketAddr
    service: Service
    how: str  # human words for the CLI and logs

    def __str__(self) -> str:
        return f"{self.name} -> {self.destination} ({self.how})"


def lookup_hostname(snapshot: Snapshot, hostname: str, namespace: str | None) -> Service | None:
    """The mesh object a hostname names, or None. The same hostname may be a service in several
    namespaces (a service's key is `<namespace>/<hostname>`): the asking workload's own namespace
    wins, as in ztunnel's `get_best_by_host(hostname, Some(namespace))`.

    Only services have hostnames today; once workloads carry one too, this is where a name finds
    them (and `resolve` / `resolve_inbound` get a Workload case: its address, the port as is)."""
    if namespace is not None:
        own = snapshot.service_by_key.get(f"{namespace}/{hostname}")
        if own is not None:
            return own
    return snapshot.service_by_hostname.get(hostname)


def search_names(
    hostname: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN
) -> tuple[str, ...]:
    """The name as given, then its Kubernetes expansions from `namespace` (what a pod's resolver
    search list does, and ztunnel's DNS `to_kube_fqdns`): `svc` -> `svc.<ns>.svc.<domain>`,
    `svc.ns` -> `svc.ns.svc.<domain>`, `svc.ns.svc` -> `svc.ns.svc.<domain>`."""
    labels = hostname.split(".")
    suffix = {
        1: f".{namespace}.svc.{cluster_domain}",
        2: f".svc.{cluster_domain}",
        3: f".{cluster_domain}" if labels[-1] == "svc" else "",
    }.get(len(labels), "")
    return (hostname, hostname + suffix) if suffix else (hostname,)


def resolve(
    snapshot: Snapshot, name: HostPort, source: Workload, *, seed: int = 0, field: str = "hostname"
) -> Resolved:
    """Outbound: the address `route()` is given for `name` asked by `source` (module docstring).
    Raises UnknownHostname or HostnameUnroutable, naming `field` (where the name came from) and
    the host."""
    tried = search_names(name.host, source.namespace)
    for hostname in tried:
        service = lookup_hostname(snapshot, hostname, source.namespace)
        if service is not None:
            return _via_service(snapshot, name, service, source, seed)
    raise UnknownHostname(
        f"{field}: got {str(name)!r}, expected a service hostname of the mesh and a port"
        f" (tried {', '.join(tried)})"
    )


def _via_service(
    snapshot: Snapshot, name: HostPort, service: Service, source: Workload, seed: int
) -> Resolved:
    if service.vips:
        vips = [ip for network, ip in service.vips if network == source.network]
        if not vips:
            raise HostnameUnroutable(
                f"hostname {name.host!r}: service {service.key} has no VIP on network"
                f" {source.network!r}"
            )
        vip = _ipv4_first(vips)
        return Resolved(name, SocketAddr(vip, name.port), service, f"service {service.key} VIP")
    endpoints = [
        w
        for w in snapshot.endpoints.get(service.key, ())
        if w.healthy and w.ips and w.network == source.network
    ]
    if not endpoints:
        raise HostnameUnroutable(
            f"hostname {name.host!r}: service {service.key} has no VIP and no healthy endpoint"
            f" on network {source.network!r}"
        )
    endpoint = random.Random(f"{seed}/{source.uid}/{name}").choice(endpoints)
    address = SocketAddr(_ipv4_first(list(endpoint.ips)), name.port)
    how = f"service {service.key} has no VIP: endpoint {endpoint.uid}"
    return Resolved(name, address, service, how)


def resolve_inbound(
    snapshot: Snapshot, authority: HostPort, workload: Workload, reached: IpAddress | None
) -> Resolved:
    """Inbound: where a CONNECT whose `:authority` is `authority` goes, on the pod `workload`
    whose address `reached` the connection arrived at (module docstring).

    As ztunnel, the pod need not be listed as an endpoint of that service: an IP authority may name
    any port of the pod, so a name grants no more; it only says which port the service maps to."""
    service = lookup_hostname(snapshot, authority.host, workload.namespace)
    if service is None:
        raise UnknownHostname(
            f":authority: got {authority.host!r}, expected a service hostname of the mesh"
        )
    port = target_port(service, workload, authority.port)
    if not port:
        raise HostnameUnroutable(
            f":authority {authority}: service {service.key} maps no target port for port"
            f" {authority.port} on pod {workload.uid}"
        )
    if reached is not None and reached in workload.ips:
        ip = reached
    elif workload.ips:
        ip = workload.ips[0]
    else:
        raise HostnameUnroutable(f":authority {authority}: pod {workload.uid} has no address")
    how = f"service {service.key} port {authority.port} -> pod {workload.uid} port {port}"
    return Resolved(authority, SocketAddr(ip, port), service, how)


def _ipv4_first(ips: list[IpAddress]) -> IpAddress:
    return next((ip for ip in ips if ip.version == 4), ips[0])
