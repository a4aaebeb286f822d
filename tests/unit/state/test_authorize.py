"""Table-driven authorization tests: every rule of docs/design.md §4 with an allow and a deny case."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from zt.addr import SocketAddr, parse_ip
from zt.config import load_document
from zt.errors import ConfigError
from zt.state import Connection, authorize

FRONTEND = "spiffe://cluster.local/ns/web/sa/frontend"
BATCH = "spiffe://cluster.local/ns/jobs/sa/batch"
OTHER_TD = "spiffe://other.td/ns/web/sa/frontend"


def _doc(*policies: dict[str, Any], selected: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "workloads": [
            {
                "uid": "dst",
                "name": "dst",
                "namespace": "default",
                "workloadIps": ["10.0.0.2", "fd00::2"],
                "protocol": "HBONE",
                "authorizationPolicies": list(selected),
            },
            {"uid": "other", "name": "other", "namespace": "other", "workloadIps": ["10.0.0.9"]},
        ],
        "policies": list(policies),
    }


def _policy(action: str, *rules: Any, name: str = "p", **extra: Any) -> dict[str, Any]:
    base = {"name": name, "namespace": "default", "scope": "Namespace", "action": action}
    return {**base, "rules": list(rules), **extra}


def _one(**fields: Any) -> list[list[dict[str, Any]]]:
    """A rule with one clause holding one match."""
    return [[fields]]


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[dict[str, Any], ...]
    allowed: bool
    policy: str | None
    identity: str | None = FRONTEND
    src: str = "10.1.0.5"
    dst: str = "10.0.0.2:8080"
    selected: tuple[str, ...] = ()


A, D = "Allow", "Deny"
CASES = [
    Case("no policy -> allow", (), True, None),
    Case("deny matches", (_policy(D, _one(destinationPorts=[8080])),), False, "default/p"),
    Case("deny misses, no allow -> allow", (_policy(D, _one(destinationPorts=[9])),), True, None),
    Case("allow matches", (_policy(A, _one(destinationPorts=[8080])),), True, "default/p"),
    Case("allow exists, misses -> deny", (_policy(A, _one(destinationPorts=[9])),), False, None),
    Case(
        "deny first even when allow matches",
        (
            _policy(A, _one(destinationPorts=[8080]), name="a"),
            _policy(D, _one(sourceIps=["10.1.0.0/16"]), name="d"),
        ),
        False,
        "default/d",
    ),
    Case(
        "rules OR: second rule matches",
        (_policy(A, _one(destinationPorts=[9]), _one(destinationPorts=[8080])),),
        True,
        "default/p",
    ),
    Case(
        "rules OR: no rule matches",
        (_policy(A, _one(destinationPorts=[9]), _one(destinationPorts=[10])),),
        False,
        None,
    ),
    Case(
        "clauses AND: both hold",
        (_policy(A, [[{"destinationPorts": [8080]}], [{"sourceIps": ["10.1.0.5"]}]]),),
        True,
        "default/p",
    ),
    Case(
        "clauses AND: one fails",
        (_policy(A, [[{"destinationPorts": [8080]}], [{"sourceIps": ["10.9.0.0/16"]}]]),),
        False,
        None,
    ),
    Case(
        "matches OR within a clause",
        (_policy(A, [[{"destinationPorts": [9]}, {"sourceIps": ["10.1.0.5/32"]}]]),),
        True,
        "default/p",
    ),
    Case(
        "fields AND within a match",
        (_policy(A, _one(sourceIps=["10.1.0.5/32"], destinationPorts=[9])),),
        False,
        None,
    ),
    Case(
        "values OR within a field",
        (_policy(A, _one(destinationPorts=[80, 8080])),),
        True,
        "default/p",
    ),
    Case("namespaces exact hit", (_policy(A, _one(namespaces=["web"])),), True, "default/p"),
    Case("namespaces exact miss", (_policy(A, _one(namespaces=["we"])),), False, None),
    Case("namespaces prefix hit", (_policy(A, _one(namespaces=["we*"])),), True, "default/p"),
    Case("namespaces prefix miss", (_policy(A, _one(namespaces=["x*"])),), False, None),
    Case("namespaces suffix hit", (_policy(A, _one(namespaces=["*eb"])),), True, "default/p"),
    Case("namespaces suffix miss", (_policy(A, _one(namespaces=["*x"])),), False, None),
    Case("namespaces presence hit", (_policy(A, _one(namespaces=["*"])),), True, "default/p"),
    Case("notNamespaces excluded", (_policy(A, _one(notNamespaces=["web"])),), False, None),
    Case("notNamespaces other", (_policy(A, _one(notNamespaces=["jobs"])),), True, "default/p"),
    Case(
        "principals without spiffe:// hit",
        (_policy(A, _one(principals=["cluster.local/ns/web/sa/frontend"])),),
        True,
        "default/p",
    ),
    Case(
        "principals other trust domain miss",
        (_policy(A, _one(principals=["cluster.local/ns/web/sa/frontend"])),),
        False,
        None,
        identity=OTHER_TD,
    ),
    Case(
        "principals prefix",
        (_policy(A, _one(principals=["cluster.local/ns/web/*"])),),
        True,
        "default/p",
    ),
    Case(
        "notPrincipals excluded",
        (_policy(A, _one(notPrincipals=["cluster.local/ns/web/sa/frontend"])),),
        False,
        None,
    ),
    Case(
        "notPrincipals other",
        (_policy(A, _one(notPrincipals=["cluster.local/ns/jobs/sa/batch"])),),
        True,
        "default/p",
    ),
    Case(
        "serviceAccounts hit",
        (_policy(A, _one(serviceAccounts=[{"namespace": "web", "serviceAccount": "frontend"}])),),
        True,
        "default/p",
    ),
    Case(
        "serviceAccounts miss (same sa, other ns)",
        (_policy(A, _one(serviceAccounts=[{"namespace": "jobs", "serviceAccount": "frontend"}])),),
        False,
        None,
    ),
    Case(
        "notServiceAccounts excluded",
        (
            _policy(
                A, _one(notServiceAccounts=[{"namespace": "web", "serviceAccount": "frontend"}])
            ),
        ),
        False,
        None,
    ),
    Case(
        "notServiceAccounts other",
        (_policy(A, _one(notServiceAccounts=[{"namespace": "jobs", "serviceAccount": "batch"}])),),
        True,
        "default/p",
    ),
    Case("sourceIps CIDR hit", (_policy(A, _one(sourceIps=["10.1.0.0/24"])),), True, "default/p"),
    Case("sourceIps CIDR miss", (_policy(A, _one(sourceIps=["10.2.0.0/24"])),), False, None),
    Case(
        "sourceIps IPv6 hit",
        (_policy(A, _one(sourceIps=["fd00:1::/64"])),),
        True,
        "default/p",
        src="fd00:1::5",
        dst="[fd00::2]:8080",
    ),
    Case(
        "sourceIps IPv4 rule never matches IPv6",
        (_policy(A, _one(sourceIps=["0.0.0.0/0"])),),
        False,
        None,
        src="fd00:1::5",
        dst="[fd00::2]:8080",
    ),
    Case("notSourceIps excluded", (_policy(A, _one(notSourceIps=["10.1.0.5"])),), False, None),
    Case(
        "notSourceIps other", (_policy(A, _one(notSourceIps=["10.9.0.0/16"])),), True, "default/p"
    ),
    Case("destinationIps hit", (_policy(A, _one(destinationIps=["10.0.0.2"])),), True, "default/p"),
    Case("destinationIps miss", (_policy(A, _one(destinationIps=["10.0.0.3"])),), False, None),
    Case(
        "notDestinationIps excl", (_policy(A, _one(notDestinationIps=["10.0.0.0/8"])),), False, None
    ),
    Case(
        "notDestinationIps other",
        (_policy(A, _one(notDestinationIps=["10.9.0.0/16"])),),
        True,
        "default/p",
    ),
    Case("notDestinationPorts excl", (_policy(A, _one(notDestinationPorts=[8080])),), False, None),
    Case(
        "notDestinationPorts other",
        (_policy(A, _one(notDestinationPorts=[80])),),
        True,
        "default/p",
    ),
    Case(
        "no identity can't match an identity ALLOW",
        (_policy(A, _one(principals=["*"])),),
        False,
        None,
        identity=None,
    ),
    Case(
        "no identity can't match a not-identity DENY either",
        (_policy(D, _one(notPrincipals=["cluster.local/ns/web/sa/frontend"])),),
        True,
        None,
        identity=None,
    ),
    Case(
        "no identity still matches IP rules",
        (_policy(A, _one(sourceIps=["10.1.0.5"])),),
        True,
        "default/p",
        identity=None,
    ),
    Case(
        "empty match holds for anyone",
        (_policy(D, _one()),),
        False,
        "default/p",
        identity=None,
    ),
    Case(
        "dry-run DENY is not enforced",
        (_policy(D, _one(destinationPorts=[8080]), dryRun=True),),
        True,
        None,
    ),
    Case(
        "dry-run ALLOW does not make other traffic deny",
        (_policy(A, _one(destinationPorts=[9]), dryRun=True),),
        True,
        None,
    ),
    Case(
        "Namespace scope: other namespace's policy does not apply",
        ({**_policy(D, _one()), "namespace": "other"},),
        True,
        None,
    ),
    Case(
        "Global scope applies everywhere",
        ({**_policy(D, _one()), "scope": "Global"},),
        False,
        "default/p",
    ),
    Case(
        "WorkloadSelector applies to selecting workloads",
        ({**_policy(D, _one()), "scope": "WorkloadSelector"},),
        False,
        "default/p",
        selected=("default/p",),
    ),
    Case(
        "WorkloadSelector ignored by others",
        ({**_policy(D, _one()), "scope": "WorkloadSelector"},),
        True,
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_authorize(case: Case) -> None:
    snapshot = load_document(_doc(*case.policies, selected=case.selected), "test")
    conn = Connection(parse_ip(case.src), SocketAddr.parse(case.dst), case.identity)
    decision = authorize(conn, snapshot)
    assert (decision.allowed, decision.policy) == (case.allowed, case.policy), decision.reason


def test_principals_written_with_spiffe_scheme_are_refused_at_load() -> None:
    """Istio's principals carry no scheme, so `spiffe://...` would never match: the loader says
    so instead of loading a rule that silently admits nobody."""
    with pytest.raises(ConfigError) as err:
        load_document(_doc(_policy(A, _one(principals=[FRONTEND]))), "t")
    assert "principals" in str(err.value) and FRONTEND in str(err.value)


def test_dry_run_outcome_is_reported() -> None:
    snapshot = load_document(_doc(_policy(D, _one(destinationPorts=[8080]), dryRun=True)), "t")
    conn = Connection(parse_ip("10.1.0.5"), SocketAddr.parse("10.0.0.2:8080"), FRONTEND)
    decision = authorize(conn, snapshot)
    assert decision.allowed
    assert [(d.policy, d.action, d.matched) for d in decision.dry_run] == [
        ("default/p", "Deny", True)
    ]


def test_deny_reason_names_the_policy() -> None:
    snapshot = load_document(_doc(_policy(D, _one(), name="block-all")), "t")
    conn = Connection(parse_ip("10.1.0.5"), SocketAddr.parse("10.0.0.2:8080"), BATCH)
    decision = authorize(conn, snapshot)
    assert decision.reason == "denied by DENY policy default/block-all"
    assert decision.verdict == "DENY"


def test_unknown_destination_only_sees_global_policies() -> None:
    doc = _doc({**_policy(D, _one()), "scope": "Global", "name": "g"}, _policy(A, _one(), name="n"))
    snapshot = load_document(doc, "t")
    conn = Connection(parse_ip("10.1.0.5"), SocketAddr.parse("10.77.0.1:80"), FRONTEND)
    assert authorize(conn, snapshot).policy == "default/g"
