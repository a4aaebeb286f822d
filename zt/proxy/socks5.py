"""SOCKS5 CONNECT (RFC 1928), sans-IO: lets tools without capture use the mesh (docs/design.md §1:
15080 SOCKS5 outbound (optional, off by default, 127.0.0.1)).

Only what a mesh needs: method 0x00 (no authentication), CMD 0x01 (CONNECT), IPv4 and IPv6
addresses, and domain names (ATYP 0x03) resolved through the mesh (zt/state/hostnames.py): a
service's or a workload's hostname, its short forms from the pod's namespace (`echo`, `echo.ns`)
or a search-suffixed form, becomes the address the pod's DNS would have answered, and the
connection is routed like a captured one.

A name outside the mesh is refused with 0x04 (host unreachable), the code ztunnel sends when its
lookup fails; zt does not ask the system resolver instead. That resolver is the node's, not the
pod's (its answers, search list and split-horizon views may differ from what the app would get),
it blocks (a thread per lookup) on the path every SOCKS client shares, and it would send the pod's
queries out from the node. A client that wants outside names resolves them itself and sends the
address (ATYP 0x01/0x04), which is passed through as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from zt.addr import Destination, HostPort, SocketAddr, from_sockaddr, parse_hostname
from zt.errors import UsageError, ZtError
from zt.proxy.flow import Outcome
from zt.proxy.outbound import OutboundFlow

log = logging.getLogger("zt.proxy.socks5")
T = TypeVar("T")
SOCKS_PORT = 15080

VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 0x01, 0x03, 0x04
# RFC 1928 §6 reply codes
REP_OK = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_HOST_UNREACHABLE = 0x04
REP_REFUSED = 0x05
REP_CMD_UNSUPPORTED = 0x07
REP_ATYP_UNSUPPORTED = 0x08


class SocksError(UsageError):
    reason = "socks_error"

    def __init__(self, message: str, reply: int = REP_FAILURE) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Greeting:
    consumed: int
    answer: bytes  # VER, METHOD


@dataclass(frozen=True)
class ConnectCommand:
    consumed: int
    destination: Destination  # a HostPort for a domain name (ATYP 0x03), to be resolved


# Resolves a domain name through the mesh (zt/node/flows.py PodFlows.resolve); raises a ZtError.
Resolver = Callable[[HostPort], SocketAddr]


def parse_greeting(buf: bytes) -> Greeting | None:
    """`VER NMETHODS METHODS...` -> the method selection to send, or None if incomplete."""
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"greeting: got version {buf[0]}, expected 5")
    end = 2 + buf[1]
    if len(buf) < end:
        return None
    method = NO_AUTH if NO_AUTH in buf[2:end] else NO_ACCEPTABLE
    return Greeting(end, bytes([VERSION, method]))


def parse_connect(buf: bytes) -> ConnectCommand | None:
    """`VER CMD RSV ATYP DST.ADDR DST.PORT` -> the destination, or None if incomplete."""
    if len(buf) < 4:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"request: got version {buf[0]}, expected 5")
    if buf[1] != CMD_CONNECT:
        raise SocksError(
            f"request: got command {buf[1]}, expected CONNECT (1)", REP_CMD_UNSUPPORTED
        )
    atyp = buf[3]
    if atyp == ATYP_DOMAIN:
        # RFC 1928 §4: "the address field contains a fully-qualified domain name. The first octet
        # of the address field contains the number of octets of name that follow, there is no
        # terminating NUL octet."
        if len(buf) < 5:
            return None
        start, size = 5, buf[4]
    else:
        start, size = 4, {ATYP_V4: 4, ATYP_V6: 16}.get(atyp, -1)
        if size < 0:
            expected = "1 (IPv4), 3 (domain name) or 4 (IPv6)"
            raise SocksError(
                f"request: got address type {atyp}, expected {expected}", REP_ATYP_UNSUPPORTED
            )
    end = start + size + 2
    if len(buf) < end:
        return None
    port = int.from_bytes(buf[end - 2 : end], "big")
    if port == 0:
        raise SocksError("request: got port 0, expected 1..65535", REP_NOT_ALLOWED)
    raw = bytes(buf[start : end - 2])
    if atyp != ATYP_DOMAIN:
        return ConnectCommand(end, SocketAddr(ipaddress.ip_address(raw), port))
    return ConnectCommand(end, _domain(raw, port))


def _domain(raw: bytes, port: int) -> Destination:
    """A domain name as an address when it is one (clients send literals so too), else a valid
    hostname to resolve; anything else is a host zt cannot reach (0x04)."""
    text = raw.decode("ascii", "replace")
    try:
        if "%" not in text:  # a zone id means nothing beyond this host (ATYP 4 cannot carry one)
            return SocketAddr(ipaddress.ip_address(text), port)
    except ValueError:
        pass
    try:
        return HostPort(parse_hostname(text, field="domain name", absolute=True), port)
    except ZtError as exc:
        raise SocksError(f"request: {exc}", REP_HOST_UNREACHABLE) from None


def reply(code: int, bound: SocketAddr | None = None) -> bytes:
    """`VER REP RSV ATYP BND.ADDR BND.PORT` (an unspecified IPv4 address when not known)."""
    addr = bound or SocketAddr(ipaddress.IPv4Address(0), 0)
    atyp = ATYP_V4 if addr.ip.version == 4 else ATYP_V6
    return bytes([VERSION, code, 0, atyp]) + addr.ip.packed + addr.port.to_bytes(2, "big")


async def _read_until(
    reader: asyncio.StreamReader, buf: bytearray, parse: Callable[[bytes], T | None]
) -> T:
    while (parsed := parse(bytes(buf))) is None:
        chunk = await asyncio.wait_for(reader.read(512), timeout=10)
        if not chunk:
            raise SocksError("client closed during the SOCKS handshake")
        buf += chunk
        if len(buf) > 1024:
            raise SocksError("handshake longer than 1 KiB")
    return parsed


async def serve(
    flow: OutboundFlow,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    resolve: Resolver | None = None,
) -> Outcome | None:
    """A SOCKS5 client: negotiate, resolve a domain name through the mesh (`resolve`; without
    one, names are refused), then the outbound flow carries it like a captured connection
    (None: refused during the negotiation, answered with its reply code)."""
    app = from_sockaddr(writer.get_extra_info("peername"))
    buf = bytearray()
    try:
        greeting = await _read_until(reader, buf, parse_greeting)
        writer.write(greeting.answer)
        if greeting.answer[1] == NO_ACCEPTABLE:
            raise SocksError("client offers no method zt accepts (no authentication)")
        del buf[: greeting.consumed]
        command = await _read_until(reader, buf, parse_connect)
        destination = _resolved(command.destination, resolve)
    except SocksError as exc:
        log.info("SOCKS5 from %s refused: %s", app, exc)
        writer.write(reply(exc.reply))
        writer.close()
        return None
    except (TimeoutError, OSError):
        writer.close()
        return None

    def announce(ok: bool) -> None:
        writer.write(reply(REP_OK if ok else REP_HOST_UNREACHABLE))

    return await flow.carry((reader, writer), app, destination, announce)


def _resolved(destination: Destination, resolve: Resolver | None) -> SocketAddr:
    if isinstance(destination, SocketAddr):
        return destination
    if resolve is None:
        raise SocksError(f"request: {destination}: no mesh to resolve names", REP_HOST_UNREACHABLE)
    try:
        return resolve(destination)
    except ZtError as exc:  # not a name of the mesh, or nothing behind it reachable from here
        raise SocksError(f"request: {exc}", REP_HOST_UNREACHABLE) from None
