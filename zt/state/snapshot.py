"""An immutable, indexed view of the mesh. Built once per config load; swapped atomically."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from zt.addr import IpAddress
from zt.state.model import Policy, Scope, Service, Workload


@dataclass(frozen=True)
class Snapshot:
    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    policies: tuple[Policy, ...]
    by_address: Mapping[tuple[str, IpAddress], Workload] = field(repr=False)
    by_uid: Mapping[str, Workload] = field(repr=False)
    service_by_vip: Mapping[tuple[str, IpAddress], Service] = field(repr=False)
    service_by_hostname: Mapping[str, Service] = field(repr=False)
    service_by_key: Mapping[str, Service] = field(repr=False)
    policy_by_key: Mapping[str, Policy] = field(repr=False)
    global_policies: tuple[Policy, ...] = field(repr=False)
    namespace_policies: Mapping[str, tuple[Policy, ...]] = field(repr=False)
    # service key -> endpoints (workloads listing that service), in uid order
    endpoints: Mapping[str, tuple[Workload, ...]] = field(repr=False)

    @classmethod
    def build(
        cls,
        workloads: tuple[Workload, ...] = (),
        services: tuple[Service, ...] = (),
        policies: tuple[Policy, ...] = (),
    ) -> Snapshot:
        """Index already-validated objects (the config loader rejects duplicates first)."""
        namespace_policies: dict[str, list[Policy]] = {}
        for p in policies:
            if p.scope is Scope.NAMESPACE:
                namespace_policies.setdefault(p.namespace, []).append(p)
        endpoints: dict[str, list[Workload]] = {}
        for w in sorted(workloads, key=lambda w: w.uid):
            for key in w.services:
                endpoints.setdefault(key, []).append(w)

        return cls(
            workloads=workloads,
            services=services,
            policies=policies,
            by_address=MappingProxyType({(w.network, ip): w for w in workloads for ip in w.ips}),
            by_uid=MappingProxyType({w.uid: w for w in workloads}),
            service_by_vip=MappingProxyType({vip: s for s in services for vip in s.vips}),
            service_by_hostname=MappingProxyType({s.hostname: s for s in services}),
            service_by_key=MappingProxyType({s.key: s for s in services}),
            policy_by_key=MappingProxyType({p.key: p for p in policies}),
            global_policies=tuple(p for p in policies if p.scope is Scope.GLOBAL),
            namespace_policies=MappingProxyType(
                {ns: tuple(ps) for ns, ps in namespace_policies.items()}
            ),
            endpoints=MappingProxyType({k: tuple(v) for k, v in endpoints.items()}),
        )

    def workload_at(self, network: str, ip: IpAddress) -> Workload | None:
        return self.by_address.get((network, ip))

    def policies_for(self, workload: Workload | None) -> tuple[Policy, ...]:
        """Every policy that applies to a destination workload: global, its namespace, selected."""
        if workload is None:
            return self.global_policies
        selected = tuple(
            p
            for key in workload.authorization_policies
            if (p := self.policy_by_key.get(key)) is not None and p.scope is Scope.WORKLOAD_SELECTOR
        )
        return self.global_policies + self.namespace_policies.get(workload.namespace, ()) + selected

    def workloads_on(self, node: str) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.node == node)


EMPTY_SNAPSHOT = Snapshot.build()
