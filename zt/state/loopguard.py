"""The loop guard: zt never delivers to, or dials, a port it listens on (ztunnel's `illegal_ports`).

Why: sk_lookup hands every connection to a pod IP back to zt's listeners, so a connection whose
destination is one of zt's own ports (say `<pod ip>:15006`) would be delivered by zt to
`<pod ip>:15006`, which is zt again: an endless chain of dials, one more socket pair per hop. The
same holds for an HBONE `:authority` naming such a port, and for `zt hbone serve` asked to CONNECT
to its own listener.

The rules (docs/design.md §1, §10), all pure functions that return a `Refusal` or None:

- inbound (plaintext and HBONE authority): a destination port zt listens on is refused, whatever
  the address (the address is the pod's own, or the request is refused elsewhere);
- outbound (captured, SOCKS5): refused only towards loopback and zt's own addresses (the IPs of
  the pods this node serves), as ztunnel does: a remote workload's :15008 as an app destination is
  legitimate (it becomes an HBONE tunnel whose authority the remote inbound refuses);
- the standalone server: its own listener, and zt's ports on loopback or a local address; then an
  operator's allow-list (`--allow CIDR[:PORTS]`), which without entries admits everything but
  loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from zt.addr import IpAddress, SocketAddr, unmap
from zt.errors import H2_CONNECT_ERROR, H2_PROTOCOL_ERROR, UsageError, ZtError
from zt.state.model import Protocol
from zt.state.snapshot import Snapshot

# Every port zt (and ztunnel) may listen on: outbound capture, inbound plaintext, inbound HBONE,
# SOCKS5, metrics, readiness, admin, DNS proxy. ztunnel's `illegal_ports` is this set plus any port
# its configuration moves a listener to.
DEFAULT_ILLEGAL_PORTS = frozenset({15001, 15006, 15008, 15080, 15020, 15021, 15000, 15053})

METRIC = "zt_loop_guard_refused_total"
METRIC_HELP = "Connections and CONNECTs refused because they would loop back into zt, by path"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Network("::1/128")


class LoopGuardRefused(ZtError):
    """A destination that would reach zt itself. 400, as ztunnel answers a CONNECT to one of its
    own ports (a malformed request: no peer can mean it)."""

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR
    reason = "loop_guard"


class DestinationNotAllowed(ZtError):
    """The standalone server's operator did not allow this destination (`--allow`).

    401, as ztunnel answers a CONNECT its authorization refuses: the request is well formed, the
    destination is simply not one this server will dial for anyone. HBONE clients (ztunnel, Envoy,
    `zt hbone connect`) read 401 as "denied, do not retry"; 403 would say the same in plain HTTP
    but is not a status HBONE peers act on."""

    http_status = 401
    h2_error_code = H2_CONNECT_ERROR
    reason = "destination_not_allowed"


@dataclass(frozen=True)
class Refusal:
    """Why a destination is refused; `error()` is the typed failure the adapters answer with."""

    destination: SocketAddr
    why: str
    loop: bool = True  # False: not a loop, only outside the operator's allow-list

    def error(self) -> ZtError:
        if self.loop:
            return LoopGuardRefused(f"loop guard: {self.destination} {self.why}")
        return DestinationNotAllowed(f"{self.destination} {self.why}")

    def __str__(self) -> str:
        prefix = "loop guard: " if self.loop else ""
        return f"{prefix}{self.destination} {self.why}"


def illegal_ports(configured: Iterable[int] = ()) -> frozenset[int]:
    """The default set plus the ports an operator moved zt's listeners to (0 = none)."""
    return DEFAULT_ILLEGAL_PORTS | {p for p in configured if p}


def is_loopback(ip: IpAddress) -> bool:
    return unmap(ip).is_loopback


def own_ips(snapshot: Snapshot, node: str) -> frozenset[IpAddress]:
    """The addresses zt listens on as a node: every IP of the node's HBONE workloads (a TCP
    workload is outside capture: zt has no listener there, its :15006 may be an app's)."""
    return frozenset(
        ip for w in snapshot.workloads_on(node) if w.protocol is Protocol.HBONE for ip in w.ips
    )


def check_inbound(destination: SocketAddr, illegal: frozenset[int]) -> Refusal | None:
    """A connection or CONNECT that reached a pod: its destination port must not be zt's.

    The address needs no check: a plaintext connection's destination is the pod's own address
    (sk_lookup does not rewrite it), and an HBONE authority naming another address is refused
    before any dial (400 authority mismatch)."""
    if destination.port in illegal:
        return Refusal(destination, f"port {destination.port} is a port zt listens on")
    return None


def _local(ip: IpAddress, own: frozenset[IpAddress]) -> bool:
    # connect() to 0.0.0.0 / :: reaches this host (Linux treats INADDR_ANY as a local address)
    plain = unmap(ip)
    return plain.is_loopback or plain.is_unspecified or plain in own or ip in own


def check_outbound(
    destination: SocketAddr, own: frozenset[IpAddress], illegal: frozenset[int]
) -> Refusal | None:
    """An app's connection leaving a pod: zt's ports are refused only on loopback or zt's own
    addresses (anything else on such a port is another host's proxy, reached through HBONE)."""
    if destination.port in illegal and _local(destination.ip, own):
        return Refusal(destination, f"is zt's own port {destination.port} on a local address")
    return None


# -- the standalone server's allow-list ----------------------------------------------------------

ALLOW_FORM = (
    "CIDR[:PORTS] with PORTS as 80, 8000-8100 or 80,443 "
    "(e.g. 10.0.0.0/8, 127.0.0.0/8:8080, fd00::/64:443, 192.0.2.7:80-90)"
)


@dataclass(frozen=True)
class AllowRule:
    """One `--allow` entry: a network and, optionally, port ranges (inclusive); None: any port."""

    network: Network
    ports: tuple[tuple[int, int], ...] | None = None

    def permits(self, destination: SocketAddr) -> bool:
        ip = unmap(destination.ip)
        if ip.version != self.network.version or ip not in self.network:
            return False
        if self.ports is None:
            return True
        return any(lo <= destination.port <= hi for lo, hi in self.ports)

    @property
    def names_loopback(self) -> bool:
        """Only a rule inside a loopback network lets loopback through ("explicitly")."""
        if isinstance(self.network, ipaddress.IPv4Network):
            return self.network.subnet_of(_LOOPBACK_V4)
        return self.network.subnet_of(_LOOPBACK_V6)


@dataclass(frozen=True)
class AllowList:
    """What the standalone server may dial. Empty: everything except loopback. Otherwise only
    what a rule permits; loopback only through a rule whose network lies inside 127.0.0.0/8 or
    is ::1 (`--allow 0.0.0.0/0` does not open loopback)."""

    rules: tuple[AllowRule, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str], *, flag: str = "--allow") -> AllowList:
        return cls(tuple(parse_allow(text, flag=flag) for text in entries))

    def permits(self, destination: SocketAddr) -> bool:
        loopback = is_loopback(destination.ip)
        if not self.rules:
            return not loopback
        return any(
            r.permits(destination) and (r.names_loopback or not loopback) for r in self.rules
        )


def _bad(flag: str, text: str, detail: str) -> UsageError:
    return UsageError(f"{flag}: got {text!r}, {detail}; expected {ALLOW_FORM}")


def _split(text: str, flag: str) -> tuple[str, str | None]:
    """`CIDR[:PORTS]` -> (cidr, ports or None). IPv6 needs brackets or a /prefix before ports."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad(flag, text, "an unclosed '['")
        host, rest = text[1:close], text[close + 1 :]
        if rest.startswith("/"):
            digits = len(rest) - len(rest[1:].lstrip("0123456789"))
            host, rest = host + rest[:digits], rest[digits:]
    elif "/" in text:
        net, _, tail = text.partition("/")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        host, rest = f"{net}/{tail[:digits]}", tail[digits:]
    elif text.count(":") == 1:  # a.b.c.d:PORTS
        host, _, ports = text.partition(":")
        rest = ":" + ports
    else:  # a bare IPv4 or IPv6 address
        host, rest = text, ""
    if rest and not rest.startswith(":"):
        raise _bad(flag, text, f"unexpected {rest!r} after the address")
    return host, (rest[1:] if rest else None)


def _network(host: str, text: str, flag: str) -> Network:
    try:
        return ipaddress.ip_network(host, strict=True)
    except ValueError as exc:
        raise _bad(flag, text, f"not a network ({exc})") from None


def _port(part: str, text: str, flag: str) -> int:
    if not part.isdigit() or not 1 <= int(part) <= 65535:
        raise _bad(flag, text, f"port {part!r} is not in 1..65535")
    return int(part)


def _ports(spec: str, text: str, flag: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in spec.split(","):
        lo_text, dash, hi_text = part.partition("-")
        lo = _port(lo_text, text, flag)
        hi = _port(hi_text, text, flag) if dash else lo
        if hi < lo:
            raise _bad(flag, text, f"port range {part!r} runs backwards")
        ranges.append((lo, hi))
    return tuple(ranges)


def parse_allow(text: str, *, flag: str = "--allow") -> AllowRule:
    """Parse one `CIDR[:PORTS]`; a bare address is a /32 or /128. Bad input -> UsageError naming
    the flag, the value and the expected form."""
    host, ports = _split(text.strip(), flag)
    network = _network(host, text, flag)
    return AllowRule(network, None if ports is None else _ports(ports, text, flag))


@dataclass(frozen=True)
class StandaloneGuard:
    """What `zt hbone serve` checks before any dial: loops first (400), then the allow-list (401).

    `listening` is the bound address (a wildcard IP listens on every local address)."""

    listening: SocketAddr
    allow: AllowList = AllowList()
    illegal: frozenset[int] = DEFAULT_ILLEGAL_PORTS

    def check(
        self, destination: SocketAddr, is_local: Callable[[IpAddress], bool]
    ) -> Refusal | None:
        """`is_local(ip)`: whether an address belongs to this host (asked only for a port that
        could loop, so the adapter's probe stays off the common path)."""
        ip, port = unmap(destination.ip), destination.port
        if ip.is_unspecified:
            return Refusal(destination, "is the unspecified address (it dials this host)")
        if port == self.listening.port and self._reaches_listener(ip, is_local):
            return Refusal(destination, f"is this server's own listener ({self.listening})")
        if port in self.illegal and (ip.is_loopback or is_local(ip)):
            return Refusal(destination, f"is zt's own port {port} on a local address")
        if not self.allow.permits(destination):
            why = "is loopback, allowed only by an explicit --allow" if ip.is_loopback else ""
            return Refusal(destination, why or "is outside every --allow", loop=False)
        return None

    def _reaches_listener(self, ip: IpAddress, is_local: Callable[[IpAddress], bool]) -> bool:
        bound = unmap(self.listening.ip)
        if bound.is_unspecified:
            return ip.is_loopback or is_local(ip)
        return ip == bound
