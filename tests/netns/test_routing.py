"""The sk_lookup-mode policy routing recipe (docs/design.md §6), installed and removed with pyroute2."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pyroute2 import NetNS

from tests.netns.fixtures import Pod
from zt.capture import routing
from zt.capture.netns import run_in_netns

pytestmark = pytest.mark.root


def _accept_local(netns: str) -> str:
    return run_in_netns(
        netns, lambda: Path("/proc/sys/net/ipv4/conf/eth0/accept_local").read_text()
    )


def _rules(netns: str) -> set[tuple[int, int, int]]:
    """(family, priority, table) of every non-default rule."""
    with NetNS(netns) as ns:
        out: set[tuple[int, int, int]] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for rule in ns.get_rules(family=family):
                prio = rule.get("priority") or 0
                if prio not in (0, 32766, 32767):
                    out.add((family, prio, rule.get("table")))
        return out


def test_recipe_installed_and_removed(sklookup_pod: Pod) -> None:
    pod = sklookup_pod
    assert _rules(pod.topo.pod) == {
        (socket.AF_INET, 100, 254),
        (socket.AF_INET, 101, 100),
        (socket.AF_INET6, 100, 254),
        (socket.AF_INET6, 101, 100),
    }
    with NetNS(pod.topo.pod) as ns:
        local = [
            (r.get("family"), r.get("type"), r.get_attr("RTA_PREFSRC"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ns.get_routes(family=family, table=100)
        ]
    assert sorted(local, key=str) == sorted(
        [(socket.AF_INET, 2, pod.topo.pod_ip4), (socket.AF_INET6, 2, pod.topo.pod_ip6)], key=str
    )
    assert _accept_local(pod.topo.pod).strip() == "1"
    pod.capture.unenroll(pod.spec.name)
    assert _rules(pod.topo.pod) == set()
    assert not routing.installed(pod.topo.pod_path)
    assert _accept_local(pod.topo.pod).strip() == "0"


def test_connect_mode_installs_no_routing(connect_pod: Pod) -> None:
    assert _rules(connect_pod.topo.pod) == set()
