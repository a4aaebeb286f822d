"""Original source: zt delivers to a pod's app from the caller's own IP, as ztunnel does by default
(its inbound `freebind_connect`), without iptables.

The delivery socket is made in the pod netns with IP_TRANSPARENT / IPV6_TRANSPARENT and
IP_FREEBIND, marked ZT_MARK_ORIGSRC (0x53a), bound to lo (SO_BINDTODEVICE) and to (caller IP,
port 0), and connected to `<pod ip>:<port>`. Three things make that work, the last two installed
per pod netns at enrol (pyroute2, no iptables) and removed at un-enrol:

- sk_lookup must not steer that SYN to 15006 (its source is no longer the pod's IP):
  zt writes the 4-tuple into `zt_deliveries` from bind() until connect() returns
  (`Capture.delivering`) and bpf/sk_lookup.c passes a SYN that has that 4-tuple and arrived
  on lo. Arrived on lo means routed over a route through lo: bound to lo, the socket's route
  lookup skips the local table's route to the pod IP (whose device is eth0: a SYN over that
  route reports eth0 as its ingress_ifindex, measured here) and takes the rule below's `local
  default dev lo`. A packet from outside the netns cannot arrive on lo, so nothing but zt's
  own SYN can match an entry, even one that guessed the 4-tuple.
- The app's replies go to the caller's IP and would leave through eth0: with
  `net.ipv4.tcp_fwmark_accept=1` (per netns; it covers IPv6 too) the app's request socket and the
  socket accept() returns take the SYN's mark, and the rule `fwmark 0x53a lookup 102` (pref 99,
  before the sk_lookup mode's rules 100/101, so it serves both outbound modes) sends them to
  table 102, `local default dev lo` (v4 and v6): they loop back inside the pod netns and reach
  zt's socket, whose bound address is the caller's IP.
- Nothing else changes: other SYNs reaching the pod cross a veth, which clears the mark
  (skb_scrub_packet across netns), so the app's other sockets keep mark 0 and the main table.

Measured on this kernel (6.18), two netns joined by a veth, the app listening in B, zt's socket
made in B bound to A's address (with and without SO_BINDTODEVICE lo): with the sysctl, rule and
table the app's accept() returns A's address (IPv4 and IPv6), the accepted socket's SO_MARK reads
0x53a (the mark survives the lo hop: loopback_xmit keeps skb->mark) and data flows both ways;
without them connect() times out (the SYN-ACK leaves through the veth). Neither `src` on the route nor accept_local is needed: the
replies already have their source, and looped-back packets keep their output route (no input
route lookup, so no martian or reverse-path check). Cost, same run, 400 dials each interleaved,
connect mode: a delivery dial from the pod's IP took 422 us median, from the caller's IP 517 us
(x1.23: the extra socket options, bind and the two zt_deliveries updates).
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pyroute2.netlink.exceptions import NetlinkError

from zt.capture.errors import RoutingError
from zt.capture.maps import ZT_MARK_ORIGSRC, IPAddress
from zt.capture.netns import iproute_in, run_in_netns

TABLE: Final = 102
PREF: Final = 99  # before the sk_lookup outbound mode's 100 (zt's marks) and 101 (capture)
_RTN_LOCAL: Final = 2
_SCOPE_HOST: Final = 254
_FWMARK_ACCEPT: Final = Path("/proc/sys/net/ipv4/tcp_fwmark_accept")


@dataclass(frozen=True)
class ReplyRouting:
    """What to install in one pod netns: one rule and one route per family of its IPs."""

    netns: Path
    families: tuple[int, ...]  # socket.AF_INET / AF_INET6

    @classmethod
    def of(cls, netns: Path, ips: tuple[IPAddress, ...]) -> ReplyRouting:
        families = {socket.AF_INET if ip.version == 4 else socket.AF_INET6 for ip in ips}
        return cls(netns, tuple(sorted(families)))


def _rule(family: int) -> dict[str, Any]:
    return {
        "family": family,
        "priority": PREF,
        "fwmark": ZT_MARK_ORIGSRC,
        "fwmask": 0xFFFFFFFF,
        "table": TABLE,
    }


def _route(family: int) -> dict[str, Any]:
    return {
        "family": family,
        "dst": "0.0.0.0/0" if family == socket.AF_INET else "::/0",
        "table": TABLE,
        "type": _RTN_LOCAL,
        "scope": _SCOPE_HOST,
    }


def install(plan: ReplyRouting) -> None:
    """Idempotent (a restarted node enrols its pods again)."""
    try:
        with iproute_in(plan.netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            present = _present(ns)
            for family in plan.families:
                if family not in present:
                    ns.rule("add", **_rule(family))
                    ns.route("add", oif=lo, **_route(family))
        _fwmark_accept(plan.netns, "1")
    except (NetlinkError, OSError) as exc:
        remove(plan)
        raise RoutingError(f"original-source reply routing in {plan.netns}: {exc}") from exc


def remove(plan: ReplyRouting) -> None:
    """Remove what install() added; absent pieces are fine (idempotent, used in cleanup)."""
    if not plan.netns.exists():
        return
    with iproute_in(plan.netns) as ns:
        lo = ns.link_lookup(ifname="lo")
        for family in (socket.AF_INET, socket.AF_INET6):
            _quiet(ns.rule, "del", **_rule(family))
            if lo:
                _quiet(ns.route, "del", oif=lo[0], **_route(family))
    with contextlib.suppress(OSError):
        _fwmark_accept(plan.netns, "0")  # the kernel default


def installed(netns: Path) -> bool:
    """Whether our rule is present in netns (tests, the final leftover check)."""
    with iproute_in(netns) as ns:
        return bool(_present(ns))


def _present(ns: Any) -> set[int]:
    return {
        family
        for family in (socket.AF_INET, socket.AF_INET6)
        for r in ns.get_rules(family=family)
        if r.get("priority") == PREF and r.get_attr("FRA_TABLE") == TABLE
    }


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(NetlinkError):
        fn(*args, **kwargs)


def _fwmark_accept(netns: Path, value: str) -> None:
    run_in_netns(netns, lambda: _FWMARK_ACCEPT.write_text(value))
