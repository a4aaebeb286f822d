"""Checks that need the whole document: uniqueness and references between objects."""

from __future__ import annotations

import ipaddress

from zt.config.schema import GatewayAddressModel, MeshFile, WorkloadModel
from zt.errors import FieldProblem


def _vip_ip(vip: str) -> tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    network, _, ip = vip.rpartition("/")
    return network, ipaddress.ip_address(ip)


def _workload_problems(mesh: MeshFile) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    uids: dict[str, int] = {}
    addresses: dict[tuple[str, object], str] = {}
    for i, w in enumerate(mesh.workloads):
        if w.uid in uids:
            problems.append(
                FieldProblem(
                    f"workloads[{i}].uid", w.uid, f"a unique uid (also workloads[{uids[w.uid]}])"
                )
            )
        uids.setdefault(w.uid, i)
        for k, ip in enumerate(w.workload_ips):
            where = f"workloads[{i}].workloadIps[{k}]"
            owner = addresses.setdefault((w.network, ip), where)
            if owner != where:
                expected = f"an address no other workload claims on network {w.network!r} ({owner})"
                problems.append(FieldProblem(where, str(ip), expected))
    return problems


def _service_problems(mesh: MeshFile) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    keys: dict[str, int] = {}
    vips: dict[tuple[str, object], str] = {}
    workload_ips = {(w.network, ip) for w in mesh.workloads for ip in w.workload_ips}
    for i, s in enumerate(mesh.services):
        key = f"{s.namespace}/{s.hostname}"
        if key in keys:
            expected = f"a unique namespace/hostname (also services[{keys[key]}])"
            problems.append(FieldProblem(f"services[{i}].hostname", s.hostname, expected))
        keys.setdefault(key, i)
        for k, vip in enumerate(s.vips):
            where = f"services[{i}].vips[{k}]"
            address = _vip_ip(vip)
            owner = vips.setdefault(address, where)
            if owner != where:
                problems.append(FieldProblem(where, vip, f"a VIP no other service has ({owner})"))
            if address in workload_ips:
                problems.append(FieldProblem(where, vip, "a VIP that is not a workload's address"))
    return problems


def _reference_problems(mesh: MeshFile) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    services = {f"{s.namespace}/{s.hostname}": s for s in mesh.services}
    selectors = {f"{p.namespace}/{p.name}": p.scope for p in mesh.policies}
    for i, w in enumerate(mesh.workloads):
        for key, ports in w.services.items():
            service = services.get(key)
            if service is None:
                expected = f"a service key; known: {sorted(services) or 'none'}"
                problems.append(FieldProblem(f"workloads[{i}].services", key, expected))
                continue
            for port in ports:
                if port not in service.ports:
                    where = f"workloads[{i}].services[{key!r}][{port}]"
                    expected = f"a port of service {key} ({sorted(service.ports)})"
                    problems.append(FieldProblem(where, port, expected))
        for k, ref in enumerate(w.authorization_policies):
            if selectors.get(ref) != "WorkloadSelector":
                where = f"workloads[{i}].authorizationPolicies[{k}]"
                expected = "the <namespace>/<name> of a policy with scope WorkloadSelector"
                problems.append(FieldProblem(where, ref, expected))
    return problems


def _port_mapping_problems(mesh: MeshFile) -> list[FieldProblem]:
    """A service port whose target is 0 must be mapped by every endpoint that serves it."""
    problems: list[FieldProblem] = []
    # Indexed once per document: a scan of every workload per service made this O(services x
    # workloads), the largest cost of validating a 5,000-workload mesh (docs/fleet.md).
    serving: dict[str, list[WorkloadModel]] = {}
    for w in mesh.workloads:
        for served in w.services:
            serving.setdefault(served, []).append(w)
    for i, s in enumerate(mesh.services):
        key = f"{s.namespace}/{s.hostname}"
        endpoints = serving.get(key, [])
        for port, target in s.ports.items():
            if target != 0:
                continue
            unmapped = [w.uid for w in endpoints if not w.services[key].get(port)]
            if not endpoints or unmapped:
                who = f"endpoints without it: {unmapped}" if endpoints else "no endpoints"
                expected = f"a target port, or an endpoint mapping for port {port} ({who})"
                problems.append(FieldProblem(f"services[{i}].ports[{port}]", 0, expected))
    return problems


def _policy_problems(mesh: MeshFile) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(mesh.policies):
        key = f"{p.namespace}/{p.name}"
        if key in seen:
            expected = f"a unique namespace/name (also policies[{seen[key]}])"
            problems.append(FieldProblem(f"policies[{i}].name", p.name, expected))
        seen.setdefault(key, i)
    return problems


def _waypoint_problem(
    where: str, gw: GatewayAddressModel, addresses: set[tuple[str, object]], services: set[str]
) -> FieldProblem | None:
    """A waypoint must name something the mesh has: a workload's address or a service VIP, or a
    service by namespace/hostname (ztunnel would fail every connection with "failed to find
    waypoint"; a typo is better refused here)."""
    d = gw.destination
    if d.address is not None:
        if (d.network or "", d.address) in addresses:
            return None
        expected = f"the address of a workload or a service VIP on network {d.network or ''!r}"
        return FieldProblem(f"{where}.destination.address", str(d.address), expected)
    key = f"{d.namespace}/{d.hostname}"
    if key in services:
        return None
    return FieldProblem(f"{where}.destination", key, "the namespace/hostname of a service")


def _waypoint_problems(mesh: MeshFile) -> list[FieldProblem]:
    addresses: set[tuple[str, object]] = {
        (w.network, ip) for w in mesh.workloads for ip in w.workload_ips
    }
    addresses |= {_vip_ip(vip) for s in mesh.services for vip in s.vips}
    services = {f"{s.namespace}/{s.hostname}" for s in mesh.services}
    found = [
        _waypoint_problem(f"workloads[{i}].waypoint", w.waypoint, addresses, services)
        for i, w in enumerate(mesh.workloads)
        if w.waypoint is not None
    ] + [
        _waypoint_problem(f"services[{i}].waypoint", s.waypoint, addresses, services)
        for i, s in enumerate(mesh.services)
        if s.waypoint is not None
    ]
    return [p for p in found if p is not None]


def cross_check(mesh: MeshFile) -> list[FieldProblem]:
    return (
        _workload_problems(mesh)
        + _service_problems(mesh)
        + _reference_problems(mesh)
        + _port_mapping_problems(mesh)
        + _policy_problems(mesh)
        + _waypoint_problems(mesh)
    )
