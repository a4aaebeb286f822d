"""`vm.py plan`: the two-node QEMU layout and command lines, computed without any I/O."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.vm.helpers import vm_py

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForThePlanTest zt-vm-lab"


def plan(*args: str) -> dict[str, Any]:
    out = vm_py("plan", "6.12", "--ports", "20022,20023,20024", "--pubkey", PUBKEY, *args)
    assert out.returncode == 0, out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_node_link_is_a_point_to_point_socket_on_loopback() -> None:
    qemu = plan()["qemu"]
    assert "socket,id=link,listen=127.0.0.1:20024" in after(qemu["node1"], "-netdev")
    assert "socket,id=link,connect=127.0.0.1:20024" in after(qemu["node2"], "-netdev")


def test_ssh_is_forwarded_from_loopback_only() -> None:
    qemu = plan()["qemu"]
    assert "user,id=mgmt,hostfwd=tcp:127.0.0.1:20022-:22" in after(qemu["node1"], "-netdev")
    assert "user,id=mgmt,hostfwd=tcp:127.0.0.1:20023-:22" in after(qemu["node2"], "-netdev")


def test_direct_kernel_boot_of_the_cached_image_through_an_overlay() -> None:
    argv = plan()["qemu"]["node1"]
    assert after(argv, "-kernel")[0].endswith("vagrant/.cache/images/6.12/vmlinuz")
    assert after(argv, "-initrd")[0].endswith("vagrant/.cache/images/6.12/initrd.img")
    assert after(argv, "-drive") == [
        f"file={after(argv, '-serial')[0].removeprefix('file:').removesuffix('.serial')}.qcow2,"
        "if=virtio,format=qcow2"
    ]
    assert "root=/dev/vda rw console=ttyS0" in after(argv, "-append")[0]


def test_kernel_cmdline_carries_this_runs_key_and_the_link_address() -> None:
    lab = plan()
    for node in lab["lab"]["nodes"]:
        cmdline = after(lab["qemu"][node["name"]], "-append")[0].split()
        key = next(a for a in cmdline if a.startswith("zt.sshkey=")).removeprefix("zt.sshkey=")
        assert base64.b64decode(key).decode() == PUBKEY
        assert f"zt.link={node['link_mac']},{node['link_ip']}/24" in cmdline
        assert f"systemd.hostname=zt-{node['name']}" in cmdline


def test_nodes_get_distinct_macs_link_addresses_and_pod_cidrs() -> None:
    nodes = plan()["lab"]["nodes"]
    assert [n["link_ip"] for n in nodes] == ["192.168.56.11", "192.168.56.12"]
    assert [n["pod_cidr"] for n in nodes] == ["10.1.0.0/24", "10.2.0.0/24"]
    macs = [n[k] for n in nodes for k in ("mgmt_mac", "link_mac")]
    assert len(set(macs)) == 4


def test_accel_tcg_and_kvm_command_lines() -> None:
    tcg = plan()["qemu"]["node1"]
    kvm = plan("--accel", "kvm")["qemu"]["node1"]
    assert (after(tcg, "-accel"), after(tcg, "-cpu")) == (["tcg,thread=multi"], ["max"])
    assert (after(kvm, "-accel"), after(kvm, "-cpu")) == (["kvm"], ["host"])


def test_bad_knobs_are_refused_naming_the_field() -> None:
    same = vm_py("plan", "6.1", "--ports", "20022,20022,20024")
    assert same.returncode == 2
    assert "expected three distinct ports" in same.stderr
    accel = vm_py("plan", "6.1", "--accel", "hvf")
    assert accel.returncode == 2
    assert "accel: got 'hvf', expected one of kvm, tcg" in accel.stderr
    pods = vm_py("plan", "6.1", "--pods", "-1")
    assert pods.returncode == 2
    assert "pods: got -1" in pods.stderr
