"""L4 authorization: a pure function of a connection and a snapshot (docs/design.md §4).

Order (as ztunnel): any DENY policy matching -> deny; else no ALLOW policy applies -> allow; else any
ALLOW policy matching -> allow; else deny. A policy matches when any of its rules does (OR); a rule
when all its clauses do (AND); a clause when any of its matches does (OR); a match when every field it
sets holds (AND), a field holding when any of its values does (OR), and a `not*` field when none does.
Dry-run policies are evaluated and reported, never enforced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zt.addr import IpAddress, SocketAddr
from zt.state.model import Action, IpNetwork, Match, Policy, Rule, ServiceAccountMatch, StringMatch
from zt.state.snapshot import Snapshot

_SPIFFE = re.compile(r"^spiffe://(?P<td>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


@dataclass(frozen=True)
class Connection:
    """What authorization knows of a connection. `src_identity` is the peer's SPIFFE id, or None for
    plaintext (which can then never match a rule that names identities)."""

    src_ip: IpAddress
    dst: SocketAddr
    src_identity: str | None = None
    network: str = ""


@dataclass(frozen=True)
class DryRunResult:
    policy: str
    action: str  # "Allow" | "Deny"
    matched: bool


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: str | None  # "<namespace>/<name>" of the deciding policy, if one decided
    reason: str
    dry_run: tuple[DryRunResult, ...] = ()

    @property
    def verdict(self) -> str:
        return "ALLOW" if self.allowed else "DENY"


@dataclass(frozen=True)
class _Peer:
    principal: str  # without spiffe://, as policies write it
    namespace: str
    service_account: str


def _peer(identity: str | None) -> _Peer | None:
    if identity is None:
        return None
    m = _SPIFFE.match(identity)
    if m is None:  # not a workload identity: only an exact principal string can name it
        return _Peer(identity.removeprefix("spiffe://"), "", "")
    return _Peer(f"{m['td']}/ns/{m['ns']}/sa/{m['sa']}", m["ns"], m["sa"])


def _any_str(patterns: tuple[StringMatch, ...], value: str) -> bool:
    return any(p.matches(value) for p in patterns)


def _any_sa(accounts: tuple[ServiceAccountMatch, ...], peer: _Peer) -> bool:
    return any(
        a.namespace == peer.namespace and a.service_account == peer.service_account
        for a in accounts
    )


def _any_net(nets: tuple[IpNetwork, ...], ip: IpAddress) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


def _field(values: tuple[object, ...], hit: bool, negated: bool) -> bool:
    """An unset field holds; a set field holds when any value hit (or, negated, when none did)."""
    if not values:
        return True
    return not hit if negated else hit


def _identity_fields(m: Match, peer: _Peer | None) -> bool:
    if not m.uses_identity:
        return True
    if peer is None:  # docs/design.md §4: connections without identity can't match identity rules
        return False
    return (
        _field(m.namespaces, _any_str(m.namespaces, peer.namespace), False)
        and _field(m.not_namespaces, _any_str(m.not_namespaces, peer.namespace), True)
        and _field(m.principals, _any_str(m.principals, peer.principal), False)
        and _field(m.not_principals, _any_str(m.not_principals, peer.principal), True)
        and _field(m.service_accounts, _any_sa(m.service_accounts, peer), False)
        and _field(m.not_service_accounts, _any_sa(m.not_service_accounts, peer), True)
    )


def match_holds(m: Match, conn: Connection, peer: _Peer | None) -> bool:
    dst_ip, dst_port = conn.dst.ip, conn.dst.port
    return (
        _identity_fields(m, peer)
        and _field(m.source_ips, _any_net(m.source_ips, conn.src_ip), False)
        and _field(m.not_source_ips, _any_net(m.not_source_ips, conn.src_ip), True)
        and _field(m.destination_ips, _any_net(m.destination_ips, dst_ip), False)
        and _field(m.not_destination_ips, _any_net(m.not_destination_ips, dst_ip), True)
        and _field(m.destination_ports, dst_port in m.destination_ports, False)
        and _field(m.not_destination_ports, dst_port in m.not_destination_ports, True)
    )


def _rule_holds(rule: Rule, conn: Connection, peer: _Peer | None) -> bool:
    return all(any(match_holds(m, conn, peer) for m in clause) for clause in rule)


def policy_matches(policy: Policy, conn: Connection) -> bool:
    peer = _peer(conn.src_identity)
    return any(_rule_holds(rule, conn, peer) for rule in policy.rules)


def authorize(conn: Connection, snapshot: Snapshot) -> Decision:
    """Decide a connection to the workload at `conn.dst` against every policy that applies to it."""
    destination = snapshot.workload_at(conn.network, conn.dst.ip)
    applicable = snapshot.policies_for(destination)
    dry = tuple(
        DryRunResult(p.key, p.action.value, policy_matches(p, conn))
        for p in applicable
        if p.dry_run
    )
    enforced = [p for p in applicable if not p.dry_run]
    for p in enforced:
        if p.action is Action.DENY and policy_matches(p, conn):
            return Decision(False, p.key, f"denied by DENY policy {p.key}", dry)
    allows = [p for p in enforced if p.action is Action.ALLOW]
    if not allows:
        return Decision(True, None, "no ALLOW policy applies", dry)
    for p in allows:
        if policy_matches(p, conn):
            return Decision(True, p.key, f"allowed by ALLOW policy {p.key}", dry)
    names = ", ".join(p.key for p in allows)
    return Decision(False, None, f"no ALLOW policy matched (applicable: {names})", dry)
