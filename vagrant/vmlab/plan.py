"""Pure planning of a two-node QEMU lab: addresses, kernel command line, QEMU argv.

No I/O here: the adapters in qemu.py/ssh.py act on what these functions return.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from vmlab.errors import LabUsageError

LINK_PREFIX = "192.168.56"  # the node-to-node link (Vagrant's usual private-network range)
ACCELS = ("kvm", "tcg")


@dataclass(frozen=True)
class Node:
    name: str
    index: int  # 1-based
    ssh_port: int  # host 127.0.0.1:<ssh_port> -> guest :22
    mgmt_mac: str
    link_mac: str
    link_ip: str  # on the node link, /24
    pod_cidr: str  # this node's pods, routed over the link by the other node


@dataclass(frozen=True)
class Image:
    disk: Path
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class Lab:
    kernel: str  # the KERNEL knob (6.1, 6.12, an ABI name)
    nodes: tuple[Node, ...]
    link_port: int  # node 1 listens on 127.0.0.1:<link_port>, node 2 connects
    memory_mib: int
    cpus: int
    pods: int
    accel: str


def _check(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise LabUsageError(f"{field}: got {value!r}, expected an integer in [{low}, {high}]")


def plan_lab(
    kernel: str,
    ssh_ports: tuple[int, int],
    link_port: int,
    *,
    memory_mib: int = 1536,
    cpus: int = 1,
    pods: int = 2,
    accel: str = "tcg",
) -> Lab:
    """Two nodes: a QEMU socket netdev is point-to-point (listen on one side, connect on the other)."""
    _check("memory_mib", memory_mib, 512, 65536)
    _check("cpus", cpus, 1, 64)
    _check("pods", pods, 0, 200)
    for i, port in enumerate((*ssh_ports, link_port)):
        _check(f"port[{i}]", port, 1024, 65535)
    if len({*ssh_ports, link_port}) != 3:
        raise LabUsageError(
            f"ports: got {(*ssh_ports, link_port)!r}, expected three distinct ports"
        )
    if accel not in ACCELS:
        raise LabUsageError(f"accel: got {accel!r}, expected one of {', '.join(ACCELS)}")
    nodes = tuple(
        Node(
            name=f"node{i}",
            index=i,
            ssh_port=ssh_ports[i - 1],
            mgmt_mac=f"52:54:00:7a:00:{i:02x}",
            link_mac=f"52:54:00:7a:01:{i:02x}",
            link_ip=f"{LINK_PREFIX}.{10 + i}",
            pod_cidr=f"10.{i}.0.0/24",
        )
        for i in (1, 2)
    )
    return Lab(kernel, nodes, link_port, memory_mib, cpus, pods, accel)


def kernel_cmdline(node: Node, ssh_pubkey: str) -> str:
    """Direct kernel boot (vagrant/README.md: `root=/dev/vda rw console=ttyS0`); zt.* args are read by the
    image's zt-cmdline unit (ssh key for this run, static address on the node link)."""
    key = base64.b64encode(ssh_pubkey.strip().encode()).decode()
    return " ".join(
        (
            "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0",
            f"systemd.hostname=zt-{node.name}",
            f"zt.sshkey={key}",
            f"zt.link={node.link_mac},{node.link_ip}/24",
        )
    )


def accel_args(accel: str) -> list[str]:
    """vagrant/README.md: Use QEMU software emulation: -accel tcg,thread=multi -cpu max; KVM where it works."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def qemu_argv(
    lab: Lab, node: Node, image: Image, *, overlay: Path, serial_log: Path, ssh_pubkey: str
) -> list[str]:
    link = (
        f"listen=127.0.0.1:{lab.link_port}"
        if node.index == 1
        else f"connect=127.0.0.1:{lab.link_port}"
    )
    return [
        "qemu-system-x86_64",
        "-name", f"zt-{node.name}",
        "-machine", "q35",
        *accel_args(lab.accel),
        "-smp", str(lab.cpus),
        "-m", str(lab.memory_mib),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", kernel_cmdline(node, ssh_pubkey),
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{node.ssh_port}-:22",
        "-device", f"virtio-net-pci,netdev=mgmt,mac={node.mgmt_mac}",
        "-netdev", f"socket,id=link,{link}",
        "-device", f"virtio-net-pci,netdev=link,mac={node.link_mac}",
    ]  # fmt: skip


def routes_to_peers(lab: Lab, node: Node) -> list[tuple[str, str]]:
    """(pod CIDR, via) for every other node's pods: cross-node pod traffic goes over the link."""
    return [(peer.pod_cidr, peer.link_ip) for peer in lab.nodes if peer != node]
