"""Policy routing of the sk_lookup outbound mode, installed in a pod netns with pyroute2.

docs/design.md §6: policy routing sends unmarked pod TCP to a `local` route in table 100 (needs:
`src <pod ipv4>` on the route, positive ip rules, `accept_local=1` on the pod interface,
`IP_TRANSPARENT` on 15001) and sk_lookup assigns it to 15001.
The recipe, per family:  rule pref 100 fwmark 0x539 -> main (zt's own sockets go out);
rule pref 101 ipproto tcp -> table 100; table 100: local default dev lo src <pod ip>.
The local table (pref 0) still wins for loopback and the pod's own addresses.

Measured here (kernel 6.18): without `src` an IPv4 connect() fails with ENETUNREACH; without
IP_TRANSPARENT on 15001 the IPv4 handshake never completes; without accept_local=1 on the pod
interface every IPv4 packet arriving from outside is dropped as a martian (its reverse-path check
matches the `ipproto tcp` rule and finds the local default route), so inbound dies. IPv6 needs
none of the three.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyroute2.netlink.exceptions import NetlinkError

from zt.capture.errors import RoutingError
from zt.capture.maps import ZT_MARK, IPAddress
from zt.capture.netns import iproute_in, run_in_netns

TABLE: Final = 100
PREF_MARKED: Final = 100
PREF_CAPTURE: Final = 101
_RTN_LOCAL: Final = 2
_SCOPE_HOST: Final = 254


@dataclass(frozen=True)
class RoutingPlan:
    """What to install in one pod netns: pure data, derived from the pod's IPs."""

    netns: Path
    sources: tuple[IPAddress, ...]  # one per family: the `src` of that family's local route
    interfaces: tuple[str, ...]  # where accept_local=1 goes (every non-lo link of the pod)


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _rules(family: int) -> list[dict[str, Any]]:
    return [
        {
            "family": family,
            "priority": PREF_MARKED,
            "fwmark": ZT_MARK,
            "fwmask": 0xFFFFFFFF,
            "table": 254,
        },
        {
            "family": family,
            "priority": PREF_CAPTURE,
            "ip_proto": socket.IPPROTO_TCP,
            "table": TABLE,
        },
    ]


def local_default(family: int, table: int) -> dict[str, Any]:
    """pyroute2 arguments of `local default dev lo` in `table` (the caller adds `oif`): every
    destination is delivered locally. Also the original-source reply table (origsrc.py)."""
    return {
        "family": family,
        "dst": "0.0.0.0/0" if family == socket.AF_INET else "::/0",
        "table": table,
        "type": _RTN_LOCAL,
        "scope": _SCOPE_HOST,
    }


def _route(ip: IPAddress) -> dict[str, Any]:
    return {**local_default(_family(ip), TABLE), "prefsrc": str(ip)}


def install(plan: RoutingPlan) -> None:
    try:
        with iproute_in(plan.netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            for ip in plan.sources:
                for rule in _rules(_family(ip)):
                    ns.rule("add", **rule)
                ns.route("add", oif=lo, **_route(ip))
    except NetlinkError as exc:
        remove(plan)
        raise RoutingError(f"policy routing in {plan.netns}: {exc}") from exc
    _accept_local(plan, "1")


def remove(plan: RoutingPlan) -> None:
    """Remove what install() added; absent pieces are fine (idempotent, used in cleanup)."""
    if not plan.netns.exists():
        return
    with iproute_in(plan.netns) as ns:
        lo = ns.link_lookup(ifname="lo")
        for ip in plan.sources:
            for rule in _rules(_family(ip)):
                _quiet(ns.rule, "del", **rule)
            if lo:
                _quiet(ns.route, "del", oif=lo[0], **_route(ip))
    _accept_local(plan, "0")  # the kernel default


def installed(netns: Path) -> bool:
    """Whether any rule of ours is present in netns (for tests and the final leftover check)."""
    with iproute_in(netns) as ns:
        prios = {r.get("priority") for fam in (2, 10) for r in ns.get_rules(family=fam)}
    return PREF_CAPTURE in prios or PREF_MARKED in prios


def interfaces(netns: Path) -> tuple[str, ...]:
    with iproute_in(netns) as ns:
        names = [link.get("ifname") for link in ns.get_links()]
    return tuple(str(n) for n in names if n and n != "lo")


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(NetlinkError):
        fn(*args, **kwargs)


def _accept_local(plan: RoutingPlan, value: str) -> None:
    def write() -> None:
        for ifname in plan.interfaces:
            path = Path("/proc/sys/net/ipv4/conf") / ifname / "accept_local"
            if path.exists():
                path.write_text(value)

    run_in_netns(plan.netns, write)
