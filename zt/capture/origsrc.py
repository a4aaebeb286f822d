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
  default dev lo`. No packet from outside the pod can arrive on lo, so none can match an
  entry, even one that guessed the 4-tuple; inside the pod, an app with CAP_NET_RAW could forge
  such a SYN, which reaches only its own pod's app, from a source it can forge there anyway.
  `zt_deliveries` is a plain hash map (not LRU: an evicted entry would send a delivery to 15006
  silently); full, the update fails with E2BIG and zt/node/podnet.py delivers that one from the
  pod's IP, counted (`zt_original_source_fallbacks_total`).
- The app's replies go to the caller's IP and would leave through eth0: with
  `net.ipv4.tcp_fwmark_accept=1` (per netns; it covers IPv6 too) the app's request socket and the
  socket accept() returns take the SYN's mark, and the rule `fwmark 0x53a lookup 102` (pref 99,
  before the sk_lookup mode's rules 100/101, so it serves both outbound modes) sends them to
  table 102, `local default dev lo` (v4 and v6): they loop back inside the pod netns and reach
  zt's socket, whose bound address is the caller's IP.
- What the kernel answers without a socket goes the same way: "net.ipv4.fwmark_reflect: Controls
  the fwmark of kernel-generated IPv4 reply packets that are not associated with a socket for
  example, TCP RSTs or ICMP echo replies). If unset, these packets have a fwmark of zero. If set,
  they have the fwmark of the packet they are replying to." (Documentation/networking/
  ip-sysctl.rst; net.ipv6.fwmark_reflect likewise). Without it the RST for a closed app port has
  mark 0, leaves through eth0 to the caller's IP, and zt's connect() waits out the whole dial
  timeout; with it the RST carries 0x53a (the SYN's mark: loopback_xmit keeps skb->mark), loops
  back and connect() fails at once with ECONNREFUSED (measured: tests/netns/
  test_original_source.py). ICMP errors the pod's kernel sends about zt's packets (icmp_send,
  e.g. from an in-pod firewall's REJECT) take the reflected mark too and loop back; the pod's
  other traffic is unchanged, its packets arrive over the veth with mark 0, so their reflected
  replies have mark 0 as before.
- Nothing else changes: other SYNs reaching the pod cross a veth, which clears the mark
  (skb_scrub_packet across netns), so the app's other sockets keep mark 0 and the main table.

The three sysctls are the pod's, not zt's: install() records their values before it changes them
in the protocol number of its table-102 routes (`_PROTO` + one bit per sysctl; the record lives
in the netns itself, so a restarted zt, or a fresh capture after `zt capture remove`, still finds
it) and remove() writes those values back. A route is added before the sysctls change and removed
after they are restored, so the sysctls are never changed without that record. install() repairs
a half-installed state (a rule without its route, or the reverse); remove() works by presence of
either, so it also cleans what a previous run left, whatever the pod's flags say.

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
from zt.capture.routing import local_default

TABLE: Final = 102
PREF: Final = 99  # before the sk_lookup outbound mode's 100 (zt's marks) and 101 (capture)
_RTN_LOCAL: Final = 2
_FAMILIES: Final[tuple[int, ...]] = (socket.AF_INET, socket.AF_INET6)
# The pod's sysctls install() sets to 1 and remove() restores (each is a 0/1 switch).
SYSCTLS: Final = ("ipv4/tcp_fwmark_accept", "ipv4/fwmark_reflect", "ipv6/fwmark_reflect")
_PROC: Final = Path("/proc/sys/net")  # /proc/sys/net follows the netns of the reading thread
# rtm_protocol of zt's table-102 routes: _PROTO + bit i set when SYSCTLS[i] was 1 before zt.
# 0xa0-0xa7 is unassigned in include/uapi/linux/rtnetlink.h (RTPROT_*: 0-18, 42, 99, 186-192).
_PROTO: Final = 0xA0
_PROTO_SPAN: Final = 1 << len(SYSCTLS)


@dataclass(frozen=True)
class ReplyRouting:
    """What to install in one pod netns: one rule and one route per family of its IPs."""

    netns: Path
    families: tuple[int, ...]  # socket.AF_INET / AF_INET6

    @classmethod
    def of(cls, netns: Path, ips: tuple[IPAddress, ...]) -> ReplyRouting:
        families = {socket.AF_INET if ip.version == 4 else socket.AF_INET6 for ip in ips}
        return cls(netns, tuple(sorted(families)))


@dataclass(frozen=True)
class _Found:
    """zt's pieces present in a netns: rule families, and route family -> its rtm_protocol."""

    rules: frozenset[int]
    routes: dict[int, int]

    def saved(self) -> tuple[str, ...]:
        """The sysctl values recorded before zt changed them; the kernel's defaults (0) when
        no route holds the record (then zt never changed them: see the module docstring) or a
        route from a zt before the record (its protocol is outside _PROTO's span)."""
        records = [p for p in self.routes.values() if _PROTO <= p < _PROTO + _PROTO_SPAN]
        proto = records[0] if records else _PROTO
        return tuple(str((proto - _PROTO) >> i & 1) for i in range(len(SYSCTLS)))


def _rule(family: int) -> dict[str, Any]:
    return {
        "family": family,
        "priority": PREF,
        "fwmark": ZT_MARK_ORIGSRC,
        "fwmask": 0xFFFFFFFF,
        "table": TABLE,
    }


def _route(family: int) -> dict[str, Any]:
    return local_default(family, TABLE)


def install(plan: ReplyRouting) -> None:
    """Idempotent (a restarted node enrols its pods again); repairs a half-installed state."""
    try:
        with iproute_in(plan.netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            found = _found(ns)
            before = found.saved() if found.routes else sysctls(plan.netns)
            proto = _PROTO + sum(1 << i for i, v in enumerate(before) if v == "1")
            for family in plan.families:
                if family not in found.routes:
                    ns.route("add", oif=lo, proto=proto, **_route(family))
            _set_sysctls(plan.netns, ("1",) * len(SYSCTLS))
            for family in plan.families:
                if family not in found.rules:
                    ns.rule("add", **_rule(family))
    except (NetlinkError, OSError, IndexError) as exc:
        remove(plan)
        raise RoutingError(f"original-source reply routing in {plan.netns}: {exc}") from exc


def remove(plan: ReplyRouting) -> None:
    """Remove what install() added, by presence (whatever the pod's flags say), and give the pod
    its sysctls back; a netns without any of it is left untouched (idempotent, used in cleanup)."""
    if not plan.netns.exists():
        return
    with iproute_in(plan.netns) as ns:
        found = _found(ns)
        if not found.rules and not found.routes:
            return
        for family in found.rules:
            _quiet(ns.rule, "del", **_rule(family))
        with contextlib.suppress(OSError):
            _set_sysctls(plan.netns, found.saved())
        lo = ns.link_lookup(ifname="lo")
        for family in found.routes:
            if lo:
                _quiet(ns.route, "del", oif=lo[0], **_route(family))


def installed(netns: Path) -> bool:
    """Whether any of install()'s rules or routes is in netns (tests, leftover checks)."""
    with iproute_in(netns) as ns:
        found = _found(ns)
    return bool(found.rules or found.routes)


def _found(ns: Any) -> _Found:
    rules = frozenset(
        family
        for family in _FAMILIES
        for r in ns.get_rules(family=family)
        if r.get("priority") == PREF and r.get_attr("FRA_TABLE") == TABLE
    )
    routes = {
        family: int(r["proto"])
        for family in _FAMILIES
        for r in ns.get_routes(family=family, table=TABLE)
        if r.get_attr("RTA_TABLE") == TABLE and r["type"] == _RTN_LOCAL and r["dst_len"] == 0
    }
    return _Found(rules, routes)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(NetlinkError):
        fn(*args, **kwargs)


def sysctls(netns: Path) -> tuple[str, ...]:
    """The pod's SYSCTLS values, in that order."""
    return run_in_netns(netns, lambda: tuple((_PROC / n).read_text().strip() for n in SYSCTLS))


def _set_sysctls(netns: Path, values: tuple[str, ...]) -> None:
    def write() -> None:
        for name, value in zip(SYSCTLS, values, strict=True):
            (_PROC / name).write_text(value)

    run_in_netns(netns, write)
