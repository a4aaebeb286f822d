"""SOCKS5 CONNECT (RFC 1928), sans-IO: lets tools without capture use the mesh (docs/design.md §1:
15080 SOCKS5 outbound (optional, off by default, 127.0.0.1)).

Only what a mesh needs: method 0x00 (no authentication), CMD 0x01 (CONNECT), IPv4 and IPv6
addresses. Domain names are refused (0x08): zt routes by IP and has no resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from zt.addr import SocketAddr, from_sockaddr
from zt.errors import UsageError
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
    destination: SocketAddr


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
        raise SocksError("request: domain names are not routed, send an IP", REP_ATYP_UNSUPPORTED)
    size = {ATYP_V4: 4, ATYP_V6: 16}.get(atyp)
    if size is None:
        raise SocksError(f"request: got address type {atyp}, expected 1 or 4", REP_ATYP_UNSUPPORTED)
    end = 4 + size + 2
    if len(buf) < end:
        return None
    ip = ipaddress.ip_address(bytes(buf[4 : 4 + size]))
    port = int.from_bytes(buf[4 + size : end], "big")
    if port == 0:
        raise SocksError("request: got port 0, expected 1..65535", REP_NOT_ALLOWED)
    return ConnectCommand(end, SocketAddr(ip, port))


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
    flow: OutboundFlow, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Outcome | None:
    """A SOCKS5 client: negotiate, then the outbound flow carries it like a captured connection
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

    return await flow.carry((reader, writer), app, command.destination, announce)
