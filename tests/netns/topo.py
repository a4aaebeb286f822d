"""A pod netns and a peer netns joined by a veth pair, built with pyroute2 (docs/design.md §7).

Names carry the prefix `ztcap-<pid>-` so concurrent runs don't collide and the final test can find
leftovers. Everything created is removed by `Topology.remove()` (called from fixtures' finally).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import NetNS, netns

from zt.capture.netns import run_in_netns

PREFIX = "ztcap-"
_seq = itertools.count(1)


@dataclass
class Topology:
    pod: str  # netns name
    peer: str
    index: int
    pod_ip4: str
    peer_ip4: str
    pod_ip6: str
    peer_ip6: str
    pod_if: str = "eth0"
    created: list[str] = field(default_factory=list)

    @property
    def pod_path(self) -> Path:
        return Path("/run/netns") / self.pod

    @property
    def peer_path(self) -> Path:
        return Path("/run/netns") / self.peer

    def remove(self) -> None:
        for name in reversed(self.created):
            with contextlib.suppress(OSError):
                netns.remove(name)  # deleting a netns also deletes its end of the veth pair
        self.created.clear()


def _sysctl(ns: str, key: str, value: str) -> None:
    def write() -> None:
        Path("/proc/sys", *key.split(".")).write_text(value)

    run_in_netns(ns, write)


def build() -> Topology:
    n = next(_seq) % 250 + 1
    base = f"{PREFIX}{os.getpid()}-{n}"
    topo = Topology(
        pod=f"{base}-pod",
        peer=f"{base}-peer",
        index=n,
        pod_ip4=f"10.200.{n}.2",
        peer_ip4=f"10.200.{n}.1",
        pod_ip6=f"fd00:200:{n}::2",
        peer_ip6=f"fd00:200:{n}::1",
    )
    try:
        for name in (topo.pod, topo.peer):
            netns.create(name)
            topo.created.append(name)
        for name in (topo.pod, topo.peer):  # IPv6 usable at once: no DAD
            _sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
            _sysctl(name, "net.ipv6.conf.all.accept_dad", "0")
        with NetNS(topo.pod) as ns:
            ns.link(
                "add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": topo.peer}
            )
        for name, ip4, ip6, gw4, gw6 in (
            (topo.pod, topo.pod_ip4, topo.pod_ip6, topo.peer_ip4, topo.peer_ip6),
            (topo.peer, topo.peer_ip4, topo.peer_ip6, topo.pod_ip4, topo.pod_ip6),
        ):
            with NetNS(name) as ns:
                lo = ns.link_lookup(ifname="lo")[0]
                eth = ns.link_lookup(ifname="eth0")[0]
                ns.link("set", index=lo, state="up")
                ns.addr("add", index=eth, address=ip4, prefixlen=24)
                ns.addr("add", index=eth, address=ip6, prefixlen=64, flags=0x02)  # IFA_F_NODAD
                ns.link("set", index=eth, state="up")
                if name == topo.pod:
                    ns.route("add", dst="0.0.0.0/0", gateway=gw4)
                    ns.route("add", dst="::/0", gateway=gw6, family=10)
        _wait_v6(topo)
    except BaseException:
        topo.remove()
        raise
    return topo


def _wait_v6(topo: Topology) -> None:
    """Bounded wait until neither side has a tentative IPv6 address."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tentative = False
        for name in (topo.pod, topo.peer):
            with NetNS(name) as ns:
                for a in ns.get_addr(family=10):
                    if a["flags"] & 0x40:  # IFA_F_TENTATIVE
                        tentative = True
        if not tentative:
            return
        time.sleep(0.05)
