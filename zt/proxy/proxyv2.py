"""PROXY protocol version 2: the header zt writes first on a connection it delivers to a workload
whose `applicationTunnel` asks for `PROXY` (a waypoint), as ztunnel's `write_proxy_protocol`.

Sans-IO: `encode` returns bytes, `parse` (for tests and tools) takes bytes. The spec is haproxy's
proxy-protocol.txt, section 2.2; its lines are quoted where they are implemented.

What ztunnel sends: command PROXY over STREAM; the source is the tunnel's client (the HBONE peer's
address), the destination the tunnel's target (the CONNECT authority, or for a hostname authority
a VIP of that service and its port); a TLV of type 0xD0 holds the peer's SPIFFE id when it has one.
Two addresses of different families are sent as AF_UNSPEC without address bytes (ztunnel's `ppp`
builder maps a mixed pair so).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from zt.addr import SocketAddr
from zt.errors import ZtError

# "The binary header [...] begins with a block of 12 bytes: \x0D \x0A \x0D \x0A \x00 \x0D \x0A
#  \x51 \x55 \x49 \x54 \x0A"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# "The 13th byte is the protocol version and command. [...] The highest four bits contains the
#  version. [...] \x2 : PROXY" and "LOCAL \x0 [...] PROXY \x1"
VERSION_2 = 0x20
COMMAND_LOCAL = 0x00
COMMAND_PROXY = 0x01
# "The 14th byte contains the transport protocol and address family. The highest 4 bits contain
#  the address family, the lowest 4 bits contain the protocol."
AF_UNSPEC = 0x00
AF_INET = 0x10
AF_INET6 = 0x20
PROTO_STREAM = 0x01  # "TCP over IPv4/IPv6 [...] \x11 / \x21"
# ztunnel's PROXY_PROTOCOL_AUTHORITY_TLV: "the identity of the source". The spec reserves 0xE0 to
# 0xEF for custom types; 0xD0 is what ztunnel (and Istio's waypoint Envoy config) use.
TLV_PEER_IDENTITY = 0xD0

# "The 15th and 16th bytes is the address length in bytes in network endian order."
_FIXED = struct.Struct("!12sBBH")
_V4 = struct.Struct("!4s4sHH")  # "uint32_t src_addr; uint32_t dst_addr; uint16_t src_port; ..."
_V6 = struct.Struct("!16s16sHH")  # "uint8_t src_addr[16]; uint8_t dst_addr[16]; ..."
_TLV = struct.Struct("!BH")  # "uint8_t type; uint8_t length_hi; uint8_t length_lo;"


class ProxyHeaderError(ZtError):
    """Bytes that are not a whole, well-formed PROXY v2 header."""

    reason = "bad_proxy_header"


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header: the addresses (None for LOCAL or AF_UNSPEC), the TLVs in order, and how
    many bytes it took."""

    command: int
    source: SocketAddr | None
    destination: SocketAddr | None
    tlvs: tuple[tuple[int, bytes], ...]
    length: int

    @property
    def identity(self) -> str | None:
        return next((v.decode() for t, v in self.tlvs if t == TLV_PEER_IDENTITY), None)


def encode(source: SocketAddr, destination: SocketAddr, identity: str | None = None) -> bytes:
    """The header for a proxied TCP connection from `source` to `destination`; `identity` (the
    peer's SPIFFE id) goes in TLV 0xD0."""
    if source.ip.version == destination.ip.version == 4:
        family = AF_INET
        addresses = _V4.pack(source.ip.packed, destination.ip.packed, source.port, destination.port)
    elif source.ip.version == destination.ip.version == 6:
        family = AF_INET6
        addresses = _V6.pack(source.ip.packed, destination.ip.packed, source.port, destination.port)
    else:  # "AF_UNSPEC [...] the receiver [...] must ignore the address information"
        family, addresses = AF_UNSPEC, b""
    tlvs = b""
    if identity is not None:
        value = identity.encode()
        tlvs = _TLV.pack(TLV_PEER_IDENTITY, len(value)) + value
    body = addresses + tlvs
    return (
        _FIXED.pack(SIGNATURE, VERSION_2 | COMMAND_PROXY, family | PROTO_STREAM, len(body)) + body
    )


def parse(data: bytes) -> ProxyHeader:
    """The header at the start of `data` (raises ProxyHeaderError if it is not one, or not
    whole)."""
    if len(data) < _FIXED.size:
        raise ProxyHeaderError(f"{len(data)} bytes: shorter than the 16-byte fixed part")
    signature, version_command, family_protocol, length = _FIXED.unpack_from(data)
    if signature != SIGNATURE or version_command & 0xF0 != VERSION_2:
        raise ProxyHeaderError(f"no PROXY v2 signature/version: {data[:13]!r}")
    end = _FIXED.size + length
    if len(data) < end:
        raise ProxyHeaderError(f"{len(data)} bytes: the header says {end}")
    body = data[_FIXED.size : end]
    family = family_protocol & 0xF0
    source = destination = None
    offset = 0
    if family in (AF_INET, AF_INET6):
        layout = _V4 if family == AF_INET else _V6
        if len(body) < layout.size:
            raise ProxyHeaderError(f"address block of {len(body)} bytes, want {layout.size}")
        src, dst, sport, dport = layout.unpack_from(body)
        source = SocketAddr(ipaddress.ip_address(src), sport)
        destination = SocketAddr(ipaddress.ip_address(dst), dport)
        offset = layout.size
    return ProxyHeader(version_command & 0x0F, source, destination, _tlvs(body[offset:]), end)


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV.size:
            raise ProxyHeaderError(f"{len(data) - offset} stray bytes after the TLVs")
        kind, length = _TLV.unpack_from(data, offset)
        start = offset + _TLV.size
        if start + length > len(data):
            raise ProxyHeaderError(f"TLV 0x{kind:02x} of {length} bytes overruns the header")
        out.append((kind, data[start : start + length]))
        offset = start + length
    return tuple(out)
