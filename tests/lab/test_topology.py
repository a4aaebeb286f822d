"""The lab topology: nodes and pods as namespaces, reachable across the fabric, removed without trace."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from zt.lab import topology

pytestmark = pytest.mark.root


def _in(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=20, check=False
    )


@pytest.fixture
def lab() -> Iterator[topology.LabPlan]:
    plan = topology.plan(f"t{os.getpid()}", nodes=2, pods=2)
    topology.build(plan)
    try:
        yield plan
    finally:
        topology.destroy(plan.prefix)
        assert topology.leftovers(plan.prefix) == []


def test_plan_is_pure_and_addresses_are_per_node() -> None:
    plan = topology.plan("x", nodes=2, pods=2)
    assert [p.name for p in plan.pods] == ["pod1-1", "pod1-2", "pod2-1", "pod2-2"]
    assert [str(p.ipv4) for p in plan.pods] == ["10.1.0.2", "10.1.0.3", "10.2.0.2", "10.2.0.3"]
    assert str(plan.pods_of("node2")[1].ipv6) == "fd00:2::3"
    assert plan.namespaces[0] == "zt-x-fabric"
    with pytest.raises(ValueError):
        topology.plan("x", nodes=0)


def test_pods_reach_each_other_across_nodes_v4_and_v6(lab: topology.LabPlan) -> None:
    src = lab.pods[0]
    for dst in (lab.pods[1], lab.pods[3]):
        for ip in (dst.ipv4, dst.ipv6):
            result = _in(src.netns, "ping", "-c1", "-W2", str(ip))
            assert result.returncode == 0, result.stdout + result.stderr
    result = _in(src.netns, "ping", "-c1", "-W2", str(lab.external_ipv4))
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_cleans_leftovers_and_failure_leaves_nothing(lab: topology.LabPlan) -> None:
    # building the same lab again removes the first copy before starting
    topology.build(lab)
    assert len(topology.leftovers(lab.prefix)) == len(lab.namespaces)
    broken = topology.plan(lab.prefix.removeprefix("zt-").removesuffix("-"), nodes=2, pods=2)
    bad_pod = topology.PodPlan(
        "bad",
        "node-missing",
        broken.prefix + "bad",
        broken.pods[0].ipv4,
        broken.pods[0].ipv6,
        "vpbad",
    )
    broken = topology.LabPlan(
        broken.prefix,
        broken.fabric_netns,
        broken.nodes,
        (*broken.pods, bad_pod),
        broken.external_netns,
        broken.external_ipv4,
        broken.external_ipv6,
    )
    with pytest.raises(StopIteration):
        topology.build(broken)
    assert topology.leftovers(lab.prefix) == []


def test_every_veth_end_has_its_own_explicitly_set_mac(lab: topology.LabPlan) -> None:
    """systemd-udevd (the VM lab's guests run it) rewrites kernel-random MACs from the interface
    name; all pairs share temporary names, so without explicit MACs every pod got one MAC and ARP
    between pods failed. addr_assign_type 3 = NET_ADDR_SET (linux/netdevice.h): udev leaves it."""
    seen: dict[str, str] = {}
    for ns in lab.namespaces:
        out = _in(ns, "sh", "-c", "for i in /sys/class/net/*; do "
                  'echo "${i##*/} $(cat $i/address) $(cat $i/addr_assign_type)"; done')  # fmt: skip
        assert out.returncode == 0, out.stderr
        for name, mac, assign in (line.split() for line in out.stdout.splitlines()):
            if name in ("lo", "br0", "fab0"):
                continue
            assert assign == "3", f"{ns}/{name}: addr_assign_type {assign}, expected 3 (set)"
            assert int(mac[:2], 16) & 0x03 == 0x02, f"{ns}/{name}: {mac} not local unicast"
            assert mac not in seen, f"{ns}/{name} and {seen[mac]} share MAC {mac}"
            seen[mac] = f"{ns}/{name}"
    assert len(seen) == 2 * (len(lab.nodes) + len(lab.pods) + 1)  # both ends of every veth
