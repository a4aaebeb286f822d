"""Socket addresses as zt writes them: `ip:port`, IPv6 as `[ip]:port` (RFC 3986 §3.2.2 style)."""

from __future__ import annotations

import ipaddress
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


def unmap(ip: IpAddress) -> IpAddress:
    """`::ffff:a.b.c.d` (how a dual-stack socket shows an IPv4 peer) -> `a.b.c.d`."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def from_sockaddr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> SocketAddr:
    """A socket's `getsockname()`/`getpeername()` as a SocketAddr, IPv4-mapped IPv6 unmapped."""
    return SocketAddr(unmap(ipaddress.ip_address(sockaddr[0].split("%")[0])), sockaddr[1])
