"""Shared fixtures of the data-plane tests: a mesh CA, workload certs, echo servers, a zt server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy.client import dial
from zt.proxy.driver import HboneDriver
from zt.proxy.forward import TcpToHbone, fixed_route
from zt.proxy.inbound import Admit, InboundFlow, allow_all
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.server import HboneServer
from zt.proxy.stream import HboneStream
from zt.proxy.tls import client_peer_check, server_peer_check

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TD = "cluster.local"
SERVER_ID = SpiffeId(TD, "default", "server")
CLIENT_ID = SpiffeId(TD, "default", "client")
LOOPBACK = SocketAddr(ipaddress.ip_address("127.0.0.1"), 0)


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: WorkloadCert
    client: WorkloadCert

    @classmethod
    def create(cls, directory: Path, trust_domain: str = TD) -> Pki:
        ca = CertificateAuthority.init(directory, trust_domain)
        now = time.time()
        return cls(
            ca,
            ca.issue(SpiffeId(trust_domain, "default", "server"), now=now),
            ca.issue(SpiffeId(trust_domain, "default", "client"), now=now),
        )


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then FIN (half-close passes through)."""
    try:
        while data := await reader.read(1 << 20):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler = echo_handler) -> AsyncIterator[SocketAddr]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=1 << 20)
    try:
        yield SocketAddr.parse(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def zt_server(
    pki: Pki,
    *,
    admission: Admit = allow_all,
    settings: HboneSettings | None = None,
    dial_timeout: float = 10.0,
) -> AsyncIterator[tuple[HboneServer, SocketAddr]]:
    server = HboneServer(
        server_context(pki.server),
        peer_check=client_peer_check(pki.ca.trust_domain),
        flow=InboundFlow(admission, dial_timeout=dial_timeout),
        settings=settings,
    )
    addr = await server.start(LOOPBACK)
    try:
        yield server, addr
    finally:
        await server.shutdown(0.5)


async def zt_dial(
    pki: Pki, addr: SocketAddr, *, settings: HboneSettings | None = None
) -> HboneDriver:
    return await dial(
        addr,
        client_context(pki.client),
        peer_check=server_peer_check([pki.server.identity]),
        settings=settings,
    )


def closed_port() -> int:
    """A loopback port with no listener (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOOPS = ("asyncio", "uvloop")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0, loop: str | None = None) -> T:
    """Run one async test body on a fresh loop, bounded in time. `loop` (default: $ZT_TEST_LOOP,
    else asyncio) picks asyncio's selector loop or uvloop (what the node and the bench run)."""
    loop = loop or os.environ.get("ZT_TEST_LOOP", "asyncio")
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415 (optional dependency)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(asyncio.wait_for(coro, timeout))
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def read_all(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await reader.read(1 << 20):
        out += chunk
    return bytes(out)


def rst(writer: asyncio.StreamWriter) -> None:
    """Close a TCP socket with RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Pair:
    """app → TcpToHbone (zt client) → HBONE/mTLS → HboneServer (zt server) → target."""

    app: SocketAddr
    target: SocketAddr
    server: HboneServer
    forwarder: TcpToHbone
    client: HboneDriver
    pool: HbonePool
    hbone: SocketAddr


@contextlib.asynccontextmanager
async def zt_pair(
    pki: Pki, handler: Handler, *, settings: HboneSettings | None = None
) -> AsyncIterator[Pair]:
    async with tcp_server(handler) as target, zt_server(pki, settings=settings) as (srv, addr):
        pool = HbonePool(lambda key: zt_dial(pki, key.destination, settings=settings))
        key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), addr)
        driver = await pool.acquire(key)  # the first pooled connection, for tests to inspect
        forwarder = TcpToHbone.via(pool, key, target)
        app = await forwarder.start(LOOPBACK)
        try:
            yield Pair(app, target, srv, forwarder, driver, pool, addr)
        finally:
            await forwarder.close()
            await pool.close()


def forwarder_with(
    opener: Callable[[], Awaitable[HboneStream]], authority: SocketAddr | None = None
) -> TcpToHbone:
    """A forwarder whose outbound flow opens every tunnel with `opener` (a test's own)."""
    target = authority or SocketAddr(ipaddress.ip_address("127.0.0.1"), 9)
    key = PoolKey(CLIENT_ID, frozenset({SERVER_ID}), target)

    async def open_tunnel(key: PoolKey, request: ConnectRequest, timeout: float) -> HboneStream:
        return await opener()

    route = fixed_route(key, target)
    flow = OutboundFlow(lambda app, dst: route, CLIENT_ID, open_tunnel)
    return TcpToHbone(flow, target)
