"""Pydantic models (edge) -> frozen domain objects (data path)."""

from __future__ import annotations

import ipaddress
from types import MappingProxyType

from zt.config.schema import (
    ApplicationTunnelModel,
    GatewayAddressModel,
    LoadBalancerModel,
    MatchModel,
    MeshFile,
    PolicyModel,
    ServiceAccountModel,
    ServiceModel,
    WorkloadModel,
)
from zt.state.model import (
    Action,
    ApplicationTunnel,
    GatewayAddress,
    Health,
    HealthPolicy,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Locality,
    Match,
    NamespacedHostname,
    NetworkAddress,
    Policy,
    Protocol,
    Scope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    TunnelProtocol,
    Workload,
    frozen_map,
)
from zt.state.snapshot import Snapshot

# istiod's fallback for a pod without `service.istio.io/canonical-revision` (or `version`) labels
DEFAULT_CANONICAL_REVISION = "latest"


def workload(m: WorkloadModel) -> Workload:
    workload_name = m.workload_name or m.name
    return Workload(
        uid=m.uid,
        name=m.name,
        namespace=m.namespace,
        service_account=m.service_account,
        trust_domain=m.trust_domain,
        ips=tuple(m.workload_ips),
        network=m.network,
        protocol=Protocol(m.protocol),
        node=m.node,
        netns=m.netns,
        status=Health(m.status),
        services=frozen_map(m.services),
        authorization_policies=tuple(m.authorization_policies),
        workload_name=workload_name,
        canonical_name=m.canonical_name or workload_name,
        canonical_revision=m.canonical_revision or DEFAULT_CANONICAL_REVISION,
        cluster_id=m.cluster_id,
        locality=Locality(m.locality.region, m.locality.zone, m.locality.subzone),
        hostname=m.hostname,
        waypoint=gateway_address(m.waypoint),
        application_tunnel=application_tunnel(m.application_tunnel),
    )


def service(m: ServiceModel) -> Service:
    vips = []
    for vip in m.vips:
        network, _, ip = vip.rpartition("/")
        vips.append((network, ipaddress.ip_address(ip)))
    return Service(
        name=m.name,
        namespace=m.namespace,
        hostname=m.hostname,
        vips=tuple(vips),
        ports=MappingProxyType(dict(m.ports)),
        subject_alt_names=tuple(m.subject_alt_names),
        waypoint=gateway_address(m.waypoint),
        load_balancer=None if m.load_balancer is None else load_balancer(m.load_balancer),
    )


def gateway_address(m: GatewayAddressModel | None) -> GatewayAddress | None:
    if m is None:
        return None
    d = m.destination
    destination: NetworkAddress | NamespacedHostname
    if d.address is not None:
        destination = NetworkAddress(d.network or "", d.address)
    else:  # the schema admits only the two forms
        assert d.namespace is not None and d.hostname is not None
        destination = NamespacedHostname(d.namespace, d.hostname)
    return GatewayAddress(destination, m.hbone_mtls_port)


def application_tunnel(m: ApplicationTunnelModel | None) -> ApplicationTunnel | None:
    return None if m is None else ApplicationTunnel(TunnelProtocol(m.protocol), m.port)


def _strings(values: list[str]) -> tuple[StringMatch, ...]:
    return tuple(StringMatch.parse(v) for v in values)


def _nets(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _accounts(values: list[ServiceAccountModel]) -> tuple[ServiceAccountMatch, ...]:
    return tuple(ServiceAccountMatch(a.namespace, a.service_account) for a in values)


def match(m: MatchModel) -> Match:
    return Match(
        namespaces=_strings(m.namespaces),
        not_namespaces=_strings(m.not_namespaces),
        principals=_strings(m.principals),
        not_principals=_strings(m.not_principals),
        service_accounts=_accounts(m.service_accounts),
        not_service_accounts=_accounts(m.not_service_accounts),
        source_ips=_nets(m.source_ips),
        not_source_ips=_nets(m.not_source_ips),
        destination_ips=_nets(m.destination_ips),
        not_destination_ips=_nets(m.not_destination_ips),
        destination_ports=tuple(m.destination_ports),
        not_destination_ports=tuple(m.not_destination_ports),
    )


def policy(m: PolicyModel) -> Policy:
    return Policy(
        name=m.name,
        namespace=m.namespace,
        scope=Scope(m.scope),
        action=Action(m.action),
        dry_run=m.dry_run,
        rules=tuple(tuple(tuple(match(x) for x in clause) for clause in rule) for rule in m.rules),
    )


def snapshot(mesh: MeshFile) -> Snapshot:
    return Snapshot.build(
        tuple(workload(w) for w in mesh.workloads),
        tuple(service(s) for s in mesh.services),
        tuple(policy(p) for p in mesh.policies),
    )


def load_balancer(m: LoadBalancerModel) -> LoadBalancer:
    return LoadBalancer(
        routing_preferences=tuple(LoadBalancerScope(s) for s in m.routing_preferences),
        mode=LoadBalancerMode(m.mode),
        health_policy=HealthPolicy(m.health_policy),
    )
