"""The mesh's names, indexed from one snapshot, and ztunnel's alias search over them: the one
resolver of mesh names. The DNS proxy (zt/dns/core.py) answers from it, and `zt route --dst`,
SOCKS5 domains and HBONE `:authority` (zt/state/hostnames.py) resolve through it, so all of them
agree on every name.

A name is a tuple of lowercase labels without the root (`(b"echo", b"default", b"svc", b"cluster",
b"local")`): DNS compares names case-insensitively (RFC 4343 §3), and tuples hash fast.

What zt answers itself (docs/dns.md):
- every service `hostname` (its VIPs on the client's network; a service without VIPs is
  "headless" and answers its healthy endpoints' addresses, as ztunnel does, but only when its
  hostname is a Kubernetes one under `svc.<cluster domain>`: ztunnel forwards other VIP-less
  names) and every workload `hostname` (the workload's addresses);
- a hostname starting with `*.` is a wildcard: it answers every name below its suffix;
- the mesh's domain: `svc.<cluster domain>`, once a hostname of the Kubernetes shape
  `<...>.<name>.<namespace>.svc.<cluster domain>` is in the mesh. A name under it that the mesh
  does not hold gets NXDOMAIN; any other unknown name is forwarded. Only the cluster domain: a
  ServiceEntry-like `a.b.svc.example.com` is answered exactly, and does not deny the rest of
  `svc.example.com` (someone else's zone).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from zt.addr import IpAddress
from zt.state.endpoints import included
from zt.state.model import Service, Workload
from zt.state.snapshot import Snapshot

Labels = tuple[bytes, ...]

DEFAULT_CLUSTER_DOMAIN = "cluster.local"
SVC = b"svc"
WILDCARD = b"*"


def labels_of(text: str) -> Labels:
    """`Echo.default.svc.cluster.local.` -> (b"echo", b"default", ...)."""
    stripped = text.rstrip(".")
    return tuple(label.encode().lower() for label in stripped.split(".")) if stripped else ()


def text_of(labels: Labels) -> str:
    return ".".join(label.decode(errors="replace") for label in labels)


@dataclass(frozen=True)
class Target:
    """What one mesh hostname resolves to: a service (its VIPs, or without VIPs its healthy
    endpoints) or a workload (its own addresses)."""

    named: Service | Workload
    vips: tuple[tuple[str, IpAddress], ...] = ()
    # without VIPs: the endpoints (a workload hostname: the workload itself)
    endpoints: tuple[Workload, ...] = ()
    first_per_endpoint: bool = False  # headless: one address of the family per endpoint

    @property
    def namespace(self) -> str:
        return self.named.namespace

    @property
    def hostname(self) -> str:
        return self.named.hostname

    def addresses(self, network: str, version: int) -> tuple[IpAddress, ...]:
        """The addresses of one IP version a client on `network` is given. Endpoint addresses
        only of endpoints on the client's network: pod IPs of another network are not routable
        from it (a VIP is, through that network's gateway)."""
        if self.vips:
            return tuple(ip for net, ip in self.vips if net == network and ip.version == version)
        out: list[IpAddress] = []
        for w in self.endpoints:
            if w.network == network:
                of_version = [ip for ip in w.ips if ip.version == version]
                out.extend(of_version[:1] if self.first_per_endpoint else of_version)
        return tuple(out)


@dataclass(frozen=True)
class Found:
    """A mesh hostname found for a query name."""

    target: Target
    # the search-list suffix was stripped to find it: answer CNAME <query> -> <stripped>, then
    # the addresses under <stripped> (ztunnel's Alias.stripped)
    stripped: Labels | None
    wildcard: bool


def mesh_domain(host: Labels, cluster_domain: Labels) -> Labels | None:
    """`svc.<cluster domain>` if `host` is `<...>.<name>.<namespace>` under it, else None (see
    the module docstring)."""
    domain = (SVC, *cluster_domain)
    return domain if len(host) >= len(domain) + 2 and _under(host, domain) else None


def _under(name: Labels, domain: Labels) -> bool:
    """`name` is strictly below `domain` (ztunnel's name_util::has_domain)."""
    return len(name) > len(domain) and name[len(name) - len(domain) :] == domain


_generations = itertools.count(1)


@dataclass
class MeshNames:
    """The names of one snapshot. Built once per snapshot; read-only afterwards. `generation`
    tells one snapshot's names from the next (what a memo of answers keys by, so it holds no
    snapshot alive)."""

    cluster_domain: Labels
    generation: int = 0
    hosts: dict[Labels, list[Target]] = field(default_factory=dict)
    wildcards: dict[Labels, list[Target]] = field(default_factory=dict)
    domains: set[Labels] = field(default_factory=set)
    # every ancestor of a mesh name inside a mesh domain (the domain included): these names
    # exist (RFC 8020 §2: NXDOMAIN would deny every name below them), so they get NODATA
    interior: set[Labels] = field(default_factory=set)

    @classmethod
    def build(cls, snapshot: Snapshot, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> MeshNames:
        names = cls(cluster_domain=labels_of(cluster_domain), generation=next(_generations))
        svc_domain = (SVC, *names.cluster_domain)
        for s in snapshot.services:
            host = labels_of(s.hostname)
            if s.vips:
                names._add(host, Target(s, vips=s.vips))
            elif _under(host, svc_domain):
                # healthy ones, or all with healthPolicy ALLOW_ALL (zt/state/endpoints.py)
                eps = tuple(w for w in snapshot.endpoints.get(s.key, ()) if included(s, w))
                names._add(host, Target(s, endpoints=eps, first_per_endpoint=True))
        for w in snapshot.workloads:
            if w.hostname:
                names._add(labels_of(w.hostname), Target(w, endpoints=(w,)))
        return names

    def _add(self, host: Labels, target: Target) -> None:
        if host[:1] == (WILDCARD,):
            self.wildcards.setdefault(host[1:], []).append(target)
            return
        self.hosts.setdefault(host, []).append(target)
        domain = mesh_domain(host, self.cluster_domain)
        if domain is not None:
            self.domains.add(domain)
            for i in range(1, len(host) - len(domain) + 1):
                self.interior.add(host[i:])

    # -- lookups -----------------------------------------------------------------------------------
    def in_mesh_domain(self, name: Labels) -> bool:
        return any(name == d or _under(name, d) for d in self.domains)

    def find(self, name: Labels, namespace: str, *, exact: bool = False) -> Found | None:
        """ztunnel's Store::find_server: the first alias of `name`, then its wildcards, that is a
        mesh hostname; of several services with that hostname, the client's namespace's.
        `exact`: the name itself and its wildcards only (a peer's `:authority`)."""
        aliases = [(name, None)] if exact else self.aliases(name, namespace)
        for alias, stripped in aliases:
            for candidate, wildcard in self._wildcards(alias):
                table = self.wildcards if wildcard else self.hosts
                targets = table.get(candidate)
                if targets:
                    best = next((t for t in targets if t.namespace == namespace), targets[0])
                    return Found(best, stripped, wildcard)
        return None

    def _wildcards(self, alias: Labels) -> Iterator[tuple[Labels, bool]]:
        """The alias, then `*.<parent>` for each parent (ztunnel's get_wildcards)."""
        yield alias, False
        if self.wildcards:
            for i in range(1, len(alias)):
                yield alias[i:], True

    def aliases(self, name: Labels, namespace: str) -> list[tuple[Labels, Labels | None]]:
        """ztunnel's Store::get_aliases: the name, its Kubernetes expansions, and for each search
        domain of a pod in `namespace` (`<ns>.svc.<cd>`, `svc.<cd>`, `<cd>`: ztunnel's shared-mode
        list, what kubelet writes into a pod's resolv.conf) the name with that suffix stripped and
        the stripped name's expansions. Each alias once, in that order."""
        cd = self.cluster_domain
        ns_domain = (namespace.encode().lower(), SVC, *cd)
        out: dict[Labels, Labels | None] = {name: None}
        for fqdn in self._kube_fqdns(name, ns_domain):
            out.setdefault(fqdn, None)
        for search in (ns_domain, (SVC, *cd), cd):
            if _under(name, search):
                stripped = name[: len(name) - len(search)]
                out.setdefault(stripped, stripped)
                for fqdn in self._kube_fqdns(stripped, ns_domain):
                    out.setdefault(fqdn, stripped)
        return list(out.items())

    def _kube_fqdns(self, name: Labels, ns_domain: Labels) -> list[Labels]:
        """ztunnel's to_kube_fqdns: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`,
        `<pod>.<subdomain>[.<ns>[.svc]]` completed to `... .svc.<cluster domain>`."""
        cd = self.cluster_domain
        svc_domain = (SVC, *cd)
        n = len(name)
        if n == 1:
            return [name + ns_domain]
        if n == 2:
            return [name + svc_domain, name + ns_domain]
        if n == 3:
            head = [name + cd] if name[-1] == SVC else []
            return [*head, name + svc_domain]
        if n == 4 and name[-1] == SVC:
            return [name + cd]
        return []


_indexed: dict[str, tuple[Snapshot, MeshNames]] = {}  # per cluster domain: the newest snapshot's


def mesh_names(snapshot: Snapshot, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> MeshNames:
    """The names of `snapshot`, indexed once: every caller (a DNS query, a SOCKS5 domain, a
    `:authority`) asks about the newest snapshot, so only the last one is kept."""
    last = _indexed.get(cluster_domain)
    if last is not None and last[0] is snapshot:
        return last[1]
    names = MeshNames.build(snapshot, cluster_domain)
    _indexed[cluster_domain] = (snapshot, names)
    return names
