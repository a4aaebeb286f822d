"""A policy change re-checks live connections and closes the ones now denied."""

from __future__ import annotations

from typing import Any

from zt.addr import SocketAddr, parse_ip
from zt.config import load_document
from zt.node.conntrack import ConnTracker, recheck
from zt.state import Connection, Decision

WORKLOADS = [{"uid": "dst", "name": "dst", "workloadIps": ["10.0.0.2"], "protocol": "HBONE"}]
A = Connection(parse_ip("10.1.0.1"), SocketAddr.parse("10.0.0.2:8080"), None)
B = Connection(parse_ip("10.1.0.2"), SocketAddr.parse("10.0.0.2:9090"), None)


def _snapshot(*policies: dict[str, Any]) -> Any:
    return load_document({"workloads": WORKLOADS, "policies": list(policies)}, "t")


DENY_9090 = {
    "name": "deny-9090",
    "scope": "Global",
    "action": "Deny",
    "rules": [[[{"destinationPorts": [9090]}]]],
}


def test_recheck_is_pure() -> None:
    assert recheck([(1, A), (2, B)], _snapshot()) == []
    [revoked] = recheck([(1, A), (2, B)], _snapshot(DENY_9090))
    assert revoked.key == 2 and revoked.decision.policy == "default/deny-9090"


def test_tracker_closes_only_denied_and_forgets_them() -> None:
    closed: list[tuple[str, Decision]] = []
    tracker = ConnTracker()
    tracker.add("pod", A, lambda d: closed.append(("A", d)))
    tracker.add("pod", B, lambda d: closed.append(("B", d)))
    assert tracker.apply(_snapshot(DENY_9090)) == 1
    assert [name for name, _ in closed] == ["B"]
    assert tracker.count("pod") == 1 and tracker.revoked_total == 1
    assert tracker.apply(_snapshot(DENY_9090)) == 0  # B is gone, A still allowed
