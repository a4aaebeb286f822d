"""Nodes and pods as network namespaces: a plan (pure) and its construction with pyroute2.

Layout for a lab named `<p>` with N nodes and M pods per node (addresses live only inside these
namespaces):

    zt-<p>-fabric   bridge fab0 joining every node's link (and the outside host)
    zt-<p>-node<i>  eth1 10.255.0.<i>/24 fd00:ff::<i>/64 on the fabric; bridge br0
                    10.<i>.0.1/24 fd00:<i>::1/64 for its pods; routes to the other nodes' pods
    zt-<p>-pod<i>-<j> eth0 10.<i>.0.<j+1>/24 fd00:<i>::<j+1>/64, default via br0
    zt-<p>-ext      eth0 10.255.0.200/24 fd00:ff::200/64: a host outside the mesh (passthrough)
    zt-<p>-ctl      eth0 10.255.0.250/24 fd00:ff::250/64: the control host of a fleet lab (etcd,
                    the signer); only with `control=True`. Nodes reach it on the fabric directly.
    zt-<p>-wp       eth0 10.1.0.250/24 fd00:1::250/64 on the first node's br0: the waypoint, a pod
                    zt does not capture (zt.lab.waypoint); only with `waypoint=True`.

Every name starts with `zt-<p>-`, so `destroy(prefix)` finds leftovers of a crashed run.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")
CONTROL_IPV4 = ipaddress.IPv4Address("10.255.0.250")
CONTROL_IPV6 = ipaddress.IPv6Address("fd00:ff::250")
WAYPOINT_HOST = 250  # the waypoint's host number in its node's pod network (pods use 2..201)
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection (v6 usable at once)


@dataclass(frozen=True)
class PodPlan:
    name: str  # pod<i>-<j>
    node: str
    netns: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    host_veth: str  # the node-side end of the pod's veth, on br0


@dataclass(frozen=True)
class NodePlan:
    name: str  # node<i>
    index: int
    netns: str
    link: str  # the node's interface on the fabric
    link_ipv4: ipaddress.IPv4Address
    link_ipv6: ipaddress.IPv6Address
    pod_net4: ipaddress.IPv4Network
    pod_net6: ipaddress.IPv6Network
    fabric_veth: str  # the fabric-side end of the node's link


@dataclass(frozen=True)
class LabPlan:
    prefix: str  # "zt-<name>-"
    fabric_netns: str
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    external_netns: str
    external_ipv4: ipaddress.IPv4Address
    external_ipv6: ipaddress.IPv6Address
    control_netns: str | None = None  # the fleet lab's control host (etcd, signer)
    control_ipv4: ipaddress.IPv4Address = CONTROL_IPV4
    control_ipv6: ipaddress.IPv6Address = CONTROL_IPV6
    control_veth: str = "fab-ctl"  # the fabric-side end of the control host's link
    waypoint: PodPlan | None = None  # the waypoint's pod (not in `pods`: zt never serves it)

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.name == name)

    def pods_of(self, node: str) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if p.node == node)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (
            self.fabric_netns,
            *(n.netns for n in self.nodes),
            *(p.netns for p in self.pods),
            self.external_netns,
            *((self.control_netns,) if self.control_netns else ()),
            *((self.waypoint.netns,) if self.waypoint else ()),
        )


def plan(
    name: str = "lab",
    nodes: int = 2,
    pods: int = 2,
    *,
    control: bool = False,
    waypoint: bool = False,
) -> LabPlan:
    if not 1 <= nodes <= 50 or not 1 <= pods <= 200:
        raise ValueError(f"nodes 1..50 and pods 1..200 per node, got {nodes} and {pods}")
    prefix = f"zt-{name}-"
    node_plans = tuple(
        NodePlan(
            name=f"node{i}",
            index=i,
            netns=f"{prefix}node{i}",
            link="eth1",
            link_ipv4=ipaddress.IPv4Address(f"10.255.0.{i}"),
            link_ipv6=ipaddress.IPv6Address(f"fd00:ff::{i}"),
            pod_net4=ipaddress.IPv4Network(f"10.{i}.0.0/24"),
            pod_net6=ipaddress.IPv6Network(f"fd00:{i}::/64"),
            fabric_veth=f"fab-n{i}",
        )
        for i in range(1, nodes + 1)
    )
    pod_plans = tuple(
        PodPlan(
            name=f"pod{n.index}-{j}",
            node=n.name,
            netns=f"{prefix}pod{n.index}-{j}",
            ipv4=n.pod_net4.network_address + j + 1,
            ipv6=n.pod_net6.network_address + j + 1,
            host_veth=f"vp{j}",
        )
        for n in node_plans
        for j in range(1, pods + 1)
    )
    return LabPlan(
        prefix=prefix,
        fabric_netns=f"{prefix}fabric",
        nodes=node_plans,
        pods=pod_plans,
        external_netns=f"{prefix}ext",
        external_ipv4=ipaddress.IPv4Address("10.255.0.200"),
        external_ipv6=ipaddress.IPv6Address("fd00:ff::200"),
        control_netns=f"{prefix}ctl" if control else None,
        waypoint=_waypoint(prefix, node_plans[0]) if waypoint else None,
    )


def _waypoint(prefix: str, node: NodePlan) -> PodPlan:
    """On the first node, where the demo's client runs: its hop to the service's pods crosses the
    node link, which the demo sniffs."""
    return PodPlan(
        name="waypoint",
        node=node.name,
        netns=f"{prefix}wp",
        ipv4=node.pod_net4.network_address + WAYPOINT_HOST,
        ipv6=node.pod_net6.network_address + WAYPOINT_HOST,
        host_veth="vwp",
    )


def _sysctl(ns: str, *settings: str) -> None:
    for setting in settings:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", setting], check=True, timeout=10
        )


def _ns_fd(ns: str) -> int:
    return os.open(NETNS_DIR / ns, os.O_RDONLY)


def _mac() -> str:
    """A random locally administered unicast MAC (first octet xxxxxx10)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _veth(a_ns: str, a_name: str, b_ns: str, b_name: str) -> None:
    """A veth pair made in the root netns, each end moved to its namespace.

    Both ends get explicit MACs: a kernel-random MAC lets systemd-udevd (on hosts that run it, as
    the VM lab's Debian guests do) apply `MACAddressPolicy=persistent` and derive the MAC from the
    interface name and machine-id, and every pair here shares its temporary names, so every pod
    ended up with one MAC and ARP between pods on a bridge failed. udev applies that policy only to
    devices whose MAC the kernel picked at random (addr_assign_type NET_ADDR_RANDOM, systemd.link(5)
    and 99-default.link); an address set at creation (NET_ADDR_SET) is left alone."""
    tmp_a, tmp_b = f"zt{os.getpid() % 100000}a", f"zt{os.getpid() % 100000}b"
    with IPRoute() as ipr:
        ipr.link(
            "add",
            ifname=tmp_a,
            kind="veth",
            address=_mac(),
            peer={"ifname": tmp_b, "address": _mac()},
        )
        for tmp, ns, final in ((tmp_a, a_ns, a_name), (tmp_b, b_ns, b_name)):
            (idx,) = ipr.link_lookup(ifname=tmp)
            fd = _ns_fd(ns)
            try:
                ipr.link("set", index=idx, net_ns_fd=fd, ifname=final)
            finally:
                os.close(fd)


def _addr(ipr: IPRoute, ifname: str, *cidrs: str, up: bool = True) -> int:
    (idx,) = ipr.link_lookup(ifname=ifname)
    for cidr in cidrs:
        iface = ipaddress.ip_interface(cidr)
        flags = IFA_F_NODAD if iface.version == 6 else 0
        ipr.addr(
            "add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen, flags=flags
        )
    if up:
        ipr.link("set", index=idx, state="up")
    return int(idx)


def _bridge(ipr: IPRoute, name: str, *cidrs: str) -> int:
    ipr.link("add", ifname=name, kind="bridge")
    return _addr(ipr, name, *cidrs)


def _enslave(ipr: IPRoute, ifname: str, bridge: str) -> None:
    (idx,) = ipr.link_lookup(ifname=ifname)
    (br,) = ipr.link_lookup(ifname=bridge)
    ipr.link("set", index=idx, master=br, state="up")


def _lo_up(ns: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def build(lab: LabPlan) -> None:
    """Create every namespace, link, address and route of the plan. Leftovers are removed first; on
    failure everything made so far is removed and the error re-raised."""
    destroy(lab.prefix)
    try:
        _build(lab)
    except BaseException:
        destroy(lab.prefix)
        raise


def _build(lab: LabPlan) -> None:
    for ns in lab.namespaces:
        netns.create(ns)
        _lo_up(ns)
        _sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    with IPRoute(netns=lab.fabric_netns) as ipr:
        _bridge(ipr, "fab0")
    for node in lab.nodes:
        _build_node(lab, node)
    _veth(lab.external_netns, "eth0", lab.fabric_netns, "fab-ext")
    with IPRoute(netns=lab.fabric_netns) as ipr:
        _enslave(ipr, "fab-ext", "fab0")
    with IPRoute(netns=lab.external_netns) as ipr:
        _addr(ipr, "eth0", f"{lab.external_ipv4}/24", f"{lab.external_ipv6}/64")
        for node in lab.nodes:
            _routes_via(ipr, node, node.link_ipv4, node.link_ipv6)
    for pod in (*lab.pods, *((lab.waypoint,) if lab.waypoint else ())):
        _build_pod(lab, pod)
    if lab.control_netns:
        _build_control(lab, lab.control_netns)


def _build_control(lab: LabPlan, ns: str) -> None:
    """The control host sits on the fabric like the outside host; it needs no routes to pods."""
    _veth(ns, "eth0", lab.fabric_netns, lab.control_veth)
    with IPRoute(netns=lab.fabric_netns) as ipr:
        _enslave(ipr, lab.control_veth, "fab0")
    with IPRoute(netns=ns) as ipr:
        _addr(ipr, "eth0", f"{lab.control_ipv4}/24", f"{lab.control_ipv6}/64")


def set_control_link(lab: LabPlan, up: bool) -> None:
    """Cut the control host off the fabric (or heal it): the fabric end of its link goes down."""
    if lab.control_netns is None:
        raise ValueError(f"lab {lab.prefix!r} has no control host")
    with IPRoute(netns=lab.fabric_netns) as ipr:
        (idx,) = ipr.link_lookup(ifname=lab.control_veth)
        ipr.link("set", index=idx, state="up" if up else "down")


def _routes_via(ipr: IPRoute, node: NodePlan, gw4: object, gw6: object) -> None:
    ipr.route("add", dst=str(node.pod_net4), gateway=str(gw4))
    ipr.route("add", dst=str(node.pod_net6), gateway=str(gw6), family=10)


def _build_node(lab: LabPlan, node: NodePlan) -> None:
    _sysctl(node.netns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    _veth(node.netns, node.link, lab.fabric_netns, node.fabric_veth)
    with IPRoute(netns=lab.fabric_netns) as ipr:
        _enslave(ipr, node.fabric_veth, "fab0")
    with IPRoute(netns=node.netns) as ipr:
        _addr(ipr, node.link, f"{node.link_ipv4}/24", f"{node.link_ipv6}/64")
        _bridge(
            ipr,
            "br0",
            f"{node.pod_net4.network_address + 1}/24",
            f"{node.pod_net6.network_address + 1}/64",
        )
        for other in lab.nodes:
            if other is not node:
                _routes_via(ipr, other, other.link_ipv4, other.link_ipv6)


def _build_pod(lab: LabPlan, pod: PodPlan) -> None:
    node = lab.node(pod.node)
    _veth(pod.netns, "eth0", node.netns, pod.host_veth)
    with IPRoute(netns=node.netns) as ipr:
        _enslave(ipr, pod.host_veth, "br0")
    with IPRoute(netns=pod.netns) as ipr:
        _addr(ipr, "eth0", f"{pod.ipv4}/24", f"{pod.ipv6}/64")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(node.pod_net4.network_address + 1))
        ipr.route("add", dst="::/0", gateway=str(node.pod_net6.network_address + 1), family=10)


def leftovers(prefix: str) -> list[str]:
    """Namespaces whose names start with the prefix (a lab's `zt-<name>-`)."""
    return sorted(ns for ns in netns.listnetns() if ns.startswith(prefix))


def destroy(prefix: str) -> list[str]:
    """Remove every namespace of the lab (their veths and bridges go with them). Idempotent."""
    removed = leftovers(prefix)
    for ns in removed:
        netns.remove(ns)
    return removed
