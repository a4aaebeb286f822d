"""Mesh hostnames where zt takes a destination: pure functions of the snapshot.

Outbound (`zt route --dst name:port`, SOCKS5 with a domain name), `resolve()` turns a name into the
address `route()` is given: one of the addresses the pod's DNS query for that name is answered
(zt/state/names.py, the resolver the DNS proxy answers from, with ztunnel's short names and
search suffixes), IPv4 first, as ztunnel picks a VIP for a hostname, the port unchanged:

- a service with VIPs: one on the source's network (`route()` then maps the service port);
- a service without VIPs (Kubernetes "headless"): one healthy endpoint on the source's network
  (ztunnel's `dns/server.rs` get_addresses: "Headless service. Use the endpoint IPs."); a client
  of a headless service dials the pod's port itself;
- a workload `hostname`: the workload's address.

Inbound (an HBONE `:authority` naming a service, docs/design.md §2), `resolve_inbound()` does what
ztunnel's `find_inbound_upstream` does since it accepts hostname authorities: the tunnel goes to the
pod the connection reached, and the service port becomes the target port (the pod's own mapping
first, else the service's); a name no service has, or a port it does not map, is a 503. A peer
sends the full hostname (never a short name, which only means something in the client's
namespace); a workload hostname leads to that workload's address, the port as is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zt.addr import HostPort, IpAddress, SocketAddr
from zt.errors import H2_CONNECT_ERROR, ZtError
from zt.state.endpoints import pick
from zt.state.model import Service, Workload
from zt.state.names import DEFAULT_CLUSTER_DOMAIN, Found, MeshNames, labels_of, mesh_names, text_of
from zt.state.route import target_port
from zt.state.snapshot import Snapshot

# Kubernetes' default cluster domain: `<svc>.<ns>.svc.cluster.local`.
CLUSTER_DOMAIN = DEFAULT_CLUSTER_DOMAIN


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
    """A name and where it leads: `destination` is what the flow dials or `route()` is given;
    `service` the service the name is (None for a workload hostname), `workload` the workload."""

    name: HostPort
    destination: SocketAddr
    service: Service | None
    how: str  # human words for the CLI and logs
    workload: Workload | None = None

    def __str__(self) -> str:
        return f"{self.name} -> {self.destination} ({self.how})"


def lookup_hostname(snapshot: Snapshot, hostname: str, namespace: str | None) -> Service | None:
    """The service with exactly this hostname, or None. The same hostname may be a service in
    several namespaces (a service's key is `<namespace>/<hostname>`): the asking workload's own
    namespace wins, as in ztunnel's `get_best_by_host(hostname, Some(namespace))`. Short names,
    search suffixes, wildcards and workload hostnames: `find_name`."""
    if namespace is not None:
        own = snapshot.service_by_key.get(f"{namespace}/{hostname}")
        if own is not None:
            return own
    return snapshot.service_by_hostname.get(hostname)


def find_name(
    snapshot: Snapshot, hostname: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN
) -> Found | None:
    """What a pod in `namespace` asking its DNS for `hostname` is answered from (zt/state/names.py:
    the name, its short-name completions, its search suffixes stripped, wildcards), or None."""
    return mesh_names(snapshot, cluster_domain).find(labels_of(hostname), namespace)


def tried_names(hostname: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The names `find_name` looks for, in order (for error messages)."""
    names = MeshNames(cluster_domain=labels_of(cluster_domain))
    return [text_of(alias) for alias, _ in names.aliases(labels_of(hostname), namespace)]


def resolve(
    snapshot: Snapshot, name: HostPort, source: Workload, *, seed: int = 0, field: str = "hostname"
) -> Resolved:
    """Outbound: the address `route()` is given for `name` asked by `source` (module docstring).
    Raises UnknownHostname or HostnameUnroutable, naming `field` (where the name came from) and
    the host."""
    found = find_name(snapshot, name.host, source.namespace)
    if found is None:
        raise UnknownHostname(
            f"{field}: got {str(name)!r}, expected a service or workload hostname of the mesh and"
            f" a port (tried {', '.join(tried_names(name.host, source.namespace))})"
        )
    target = found.target
    network = source.network
    ips = list(target.addresses(network, 4) or target.addresses(network, 6))
    named = target.named
    if isinstance(named, Workload):
        if not ips:
            raise HostnameUnroutable(
                f"hostname {name.host!r}: workload {named.uid} has no address on network"
                f" {network!r}"
            )
        how = f"workload {named.uid}"
        return Resolved(name, SocketAddr(ips[0], name.port), None, how, named)
    if target.vips:
        if not ips:
            raise HostnameUnroutable(
                f"hostname {name.host!r}: service {named.key} has no VIP on network {network!r}"
            )
        return Resolved(name, SocketAddr(ips[0], name.port), named, f"service {named.key} VIP")
    if not ips:
        raise HostnameUnroutable(
            f"hostname {name.host!r}: service {named.key} has no VIP and no healthy endpoint"
            f" on network {network!r}"
        )
    # the nearest endpoint with an address of the family `ips` holds (zt/state/endpoints.py)
    version = ips[0].version
    rng = random.Random(f"{seed}/{source.uid}/{name}")
    endpoint = pick(
        named,
        target.endpoints,
        source,
        rng,
        lambda w: w.network == network and any(ip.version == version for ip in w.ips),
    )
    if endpoint is None:
        raise HostnameUnroutable(
            f"hostname {name.host!r}: service {named.key} has no endpoint its load balancer"
            f" allows for {source.uid}"
        )
    ip = next(ip for ip in endpoint.ips if ip.version == version)
    how = f"service {named.key} has no VIP: endpoint {endpoint.uid}"
    return Resolved(name, SocketAddr(ip, name.port), named, how, endpoint)


def resolve_inbound(
    snapshot: Snapshot, authority: HostPort, workload: Workload, reached: IpAddress | None
) -> Resolved:
    """Inbound: where a CONNECT whose `:authority` is `authority` goes, on the pod `workload`
    whose address `reached` the connection arrived at (module docstring).

    As ztunnel, the pod need not be listed as an endpoint of that service: an IP authority may name
    any port of the pod, so a name grants no more; it only says which port the service maps to."""
    service = lookup_hostname(snapshot, authority.host, workload.namespace)
    if service is not None:
        return _inbound_service(authority, service, workload, reached)
    # not a service's hostname as is: a wildcard service's name, or a workload's hostname
    found = mesh_names(snapshot).find(labels_of(authority.host), workload.namespace, exact=True)
    if found is None:
        raise UnknownHostname(
            f":authority: got {authority.host!r}, expected a service or workload hostname of the"
            " mesh"
        )
    named = found.target.named
    if isinstance(named, Service):
        return _inbound_service(authority, named, workload, reached)
    # a workload's address, the port as is; if it is not this pod's, the caller refuses it
    ip = _reached_ip(authority, named, reached if named.uid == workload.uid else None)
    how = f"workload {named.uid} port {authority.port}"
    return Resolved(authority, SocketAddr(ip, authority.port), None, how, named)


def _inbound_service(
    authority: HostPort, service: Service, workload: Workload, reached: IpAddress | None
) -> Resolved:
    port = target_port(service, workload, authority.port)
    if not port:
        raise HostnameUnroutable(
            f":authority {authority}: service {service.key} maps no target port for port"
            f" {authority.port} on pod {workload.uid}"
        )
    ip = _reached_ip(authority, workload, reached)
    how = f"service {service.key} port {authority.port} -> pod {workload.uid} port {port}"
    return Resolved(authority, SocketAddr(ip, port), service, how, workload)


def _reached_ip(authority: HostPort, workload: Workload, reached: IpAddress | None) -> IpAddress:
    if reached is not None and reached in workload.ips:
        return reached
    if workload.ips:
        return workload.ips[0]
    raise HostnameUnroutable(f":authority {authority}: pod {workload.uid} has no address")
