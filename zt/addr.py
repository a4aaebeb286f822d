"""Socket addresses as zt writes them: `ip:port`, IPv6 as `[ip]:port` (RFC 3986 §3.2.2 style);
and a mesh hostname with a port, `name:port` (`HostPort`), where zt also takes a destination."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from zt.errors import AddressError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str, *, field: str = "address") -> IpAddress:
    """Parse an IPv4/IPv6 literal or raise AddressError naming the field and the value."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise AddressError(f"{field}: got {text!r}, expected an IPv4 or IPv6 address") from None


@dataclass(frozen=True, order=True)
class SocketAddr:
    """An (IP, port) pair; `str()` gives `ip:port` or `[v6]:port`."""

    ip: IpAddress
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise AddressError(f"port: got {self.port!r}, expected 0..65535")

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, field: str = "address") -> SocketAddr:
        """Parse `ip:port` or `[ipv6]:port`; a bare IPv6 without brackets is ambiguous and refused."""
        expected = "ip:port or [ipv6]:port"
        host, sep, port_text = text.strip().rpartition(":")
        if not sep or not host:
            raise AddressError(f"{field}: got {text!r}, expected {expected}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise AddressError(f"{field}: got {text!r}, expected brackets only around IPv6")
        elif ":" in host:
            raise AddressError(f"{field}: got {text!r}, expected {expected} (IPv6 needs brackets)")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise AddressError(f"{field}: got port {port_text!r} in {text!r}, expected 1..65535")
        return cls(parse_ip(host, field=field), int(port_text))


# RFC 1123 §2.1 (relaxing RFC 952): a label is letters, digits and hyphens, begins and ends with a
# letter or digit; "Host software MUST handle host names of up to 63 characters [per label]".
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# RFC 1035 §2.3.4: names are 255 octets or less on the wire, i.e. 253 characters as text.
MAX_HOSTNAME = 253
HOSTNAME_FORM = "a hostname of letters, digits, '-' and '.' (RFC 1123: labels of 1..63, 253 in all)"


def parse_hostname(text: str, *, field: str = "hostname", absolute: bool = False) -> str:
    """A host name per RFC 1123 §2.1, lowercased (RFC 4343: names compare case-insensitively).
    `absolute`: a trailing dot (the root) is allowed and dropped, as users and resolvers write
    FQDNs; on the wire (an HBONE `:authority`) zt takes the name only as peers send it."""
    # ASCII first: str.lower() maps some non-ASCII letters to ASCII ones (KELVIN SIGN -> k).
    name = text.lower() if text.isascii() else ""
    if absolute and name.endswith("."):
        name = name[:-1]
    if not name:
        raise AddressError(f"{field}: got {text!r}, expected {HOSTNAME_FORM}")
    if len(name) > MAX_HOSTNAME:
        length = f"{len(name)} characters"
        raise AddressError(f"{field}: got {text!r} ({length}), expected {HOSTNAME_FORM}")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            why = (
                "an empty label"
                if not label
                else f"a label of {len(label)} characters"
                if len(label) > 63
                else f"label {label!r}"
            )
            raise AddressError(f"{field}: got {text!r} ({why}), expected {HOSTNAME_FORM}")
    # RFC 1123 §2.1: "a valid host name can never have the dotted-decimal form #.#.#.#, since at
    # least the highest-level component label will be alphabetic" (so 1.2.3 is no name either).
    if labels[-1].isdigit():
        raise AddressError(f"{field}: got {text!r} (numeric last label), expected {HOSTNAME_FORM}")
    return name


@dataclass(frozen=True, order=True)
class HostPort:
    """A hostname and a port, `name:port`: a destination named by the mesh (a service hostname),
    resolved to a SocketAddr by zt/state/hostnames.py. `host` is already valid and lowercase."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if parse_hostname(self.host) != self.host:
            raise AddressError(f"hostname: got {self.host!r}, expected it in lowercase")
        if not 1 <= self.port <= 65535:
            raise AddressError(f"port: got {self.port!r}, expected 1..65535")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# Where zt takes a destination from a user or a peer: an address, or a mesh name to resolve.
Destination = SocketAddr | HostPort
DESTINATION_FORM = "ip:port, [ipv6]:port or hostname:port"


def parse_destination(text: str, *, field: str = "address") -> Destination:
    """`ip:port`, `[ipv6]:port` or `hostname:port` (an FQDN's trailing dot allowed). A host that
    looks like an address (digits and dots, brackets, colons) is parsed as one, so `10.0.0.300:80`
    is a bad address, not a name."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise AddressError(f"{field}: got {text!r}, expected {DESTINATION_FORM}")
    if host.startswith("[") or ":" in host or _dotted_digits(host):
        return SocketAddr.parse(text, field=field)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise AddressError(f"{field}: got port {port_text!r} in {text!r}, expected 1..65535")
    return HostPort(parse_hostname(host, field=field, absolute=True), int(port_text))


def _dotted_digits(host: str) -> bool:
    return all(part.isdigit() for part in host.split("."))


def unmap(ip: IpAddress) -> IpAddress:
    """`::ffff:a.b.c.d` (how a dual-stack socket shows an IPv4 peer) -> `a.b.c.d`."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def from_sockaddr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> SocketAddr:
    """A socket's `getsockname()`/`getpeername()` as a SocketAddr, IPv4-mapped IPv6 unmapped."""
    return SocketAddr(unmap(ipaddress.ip_address(sockaddr[0].split("%")[0])), sockaddr[1])
