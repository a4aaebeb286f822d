"""vagrant/provision/pods.sh, run for real in a private network + mount namespace (root).

`unshare --net --mount` with a tmpfs on /run/netns: the bridge, the pods and their netns names
exist only inside the test's namespaces and vanish with it, so the host sees nothing.
"""

from __future__ import annotations

import pytest

from tests.vm.helpers import VAGRANT, run

pytestmark = pytest.mark.root

PODS = VAGRANT / "provision" / "pods.sh"


def in_private_ns(script: str) -> tuple[int, str]:
    wrapped = f"set -eu; mkdir -p /run/netns; mount -t tmpfs tmpfs /run/netns; {script}"
    out = run(["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", wrapped])
    return out.returncode, out.stdout + out.stderr


def test_pods_get_addresses_reach_each_other_and_route_to_the_peer_node() -> None:
    status, out = in_private_ns(
        f"ip link set lo up; ip link add zt-link type veth peer name zt-peer; ip link set zt-peer up; ip addr add 192.168.56.11/24 dev zt-link;"
        f"ip link set zt-link up; {PODS} 1 3 10.2.0.0/24=192.168.56.12;"
        "ip netns list; ip -n pod1-1 -4 -o addr show dev eth0; ip route show 10.2.0.0/24;"
        "ip netns exec pod1-1 ping -c 1 -W 2 10.1.0.4 >/dev/null && echo PING-OK"
    )
    assert status == 0, out
    assert "pods: node 1 has 3 pod(s) on zt-br0 10.1.0.0/24" in out
    assert {"pod1-1", "pod1-2", "pod1-3"} <= set(out.split())
    assert "inet 10.1.0.2/24" in out
    assert "10.2.0.0/24 via 192.168.56.12 dev zt-link" in out
    assert "PING-OK" in out


def test_pods_script_is_idempotent_and_down_removes_everything() -> None:
    status, out = in_private_ns(
        f"{PODS} 2 2 >/dev/null; {PODS} 2 1; echo NS: $(ip netns list | wc -l);"
        f"{PODS} --down; {PODS} --down; echo AFTER: $(ip netns list | wc -l) $(ip -o link | grep -c zt-br0)"
    )
    assert status == 0, out
    assert "NS: 1" in out
    assert "AFTER: 0 0" in out


def test_pods_script_refuses_a_non_numeric_node() -> None:
    status, out = in_private_ns(f"{PODS} one 2")
    assert status == 2
    assert "NODE_INDEX and POD_COUNT must be integers" in out
