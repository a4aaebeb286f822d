"""One pod's DNS proxy: a UDP and a TCP server on <address>:15053 around one `DnsCore`.

The node makes one `DnsServer` per pod it serves and hands it a socket maker that creates
sockets in the pod's network namespace (`PodNet`); binding and all I/O then happen here, on the
event loop. Upstream sockets are made in zt's own namespace unless the caller passes another
maker: the node's resolv.conf names servers reachable from the node.

TCP follows RFC 7766: each message behind a two-byte length (§8), several queries per connection
answered in order (§6.2.1), and a connection idle for `tcp_idle_timeout` closed (§6.2.3; ztunnel
waits 5 s). Connections and forwarded queries in flight are capped per pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from zt.dns.cache import Cache, CacheSettings, Key
from zt.dns.core import CoreSettings, DnsCore, Drop, Forward, Reply
from zt.dns.metrics import DnsMetrics
from zt.dns.raw import CD, Answer
from zt.dns.upstream import (
    LENGTH,
    POOL_SOCKETS,
    SOCKET_USES,
    SocketMaker,
    Upstream,
    UpstreamClient,
)
from zt.dns.wire import Transport
from zt.errors import ZtError
from zt.state.snapshot import Snapshot

log = logging.getLogger("zt.dns")
DNS_PROXY_PORT = 15053


class DnsBindError(ZtError):
    reason = "dns_bind"


@dataclass(frozen=True)
class ServerSettings:
    address: str = "127.0.0.1"
    port: int = DNS_PROXY_PORT
    tcp_idle_timeout: float = 5.0
    max_tcp_connections: int = 64
    max_forwards: int = 256  # upstream exchanges in flight; past it, SERVFAIL at once
    udp_timeout: float = 2.0
    tcp_timeout: float = 5.0
    upstream_sockets: int = POOL_SOCKETS  # open UDP sockets per upstream
    upstream_socket_uses: int = SOCKET_USES  # queries per socket before a new one replaces it
    core: CoreSettings = field(default_factory=CoreSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)


class _Udp(asyncio.DatagramProtocol):
    """One UDP socket of the server: answers go out on the socket the query came in on."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram transport (asyncio's selector one does not subclass DatagramTransport in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.server.udp_query(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp error: %s", exc)  # an ICMP error for an earlier answer: nothing to do


class DnsServer:
    def __init__(
        self,
        names: Callable[[], Snapshot],
        upstreams: Sequence[Upstream],
        socket_maker: SocketMaker = socket.socket,
        metrics: DnsMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        client_uid: str,
        settings: ServerSettings | None = None,
        upstream_socket_maker: SocketMaker = socket.socket,
    ) -> None:
        self.settings = settings or ServerSettings()
        self.client_uid = client_uid
        self.core = DnsCore(names, client_uid, Cache(self.settings.cache), self.settings.core)
        self.upstream = UpstreamClient(
            upstreams,
            upstream_socket_maker,
            metrics,
            udp_timeout=self.settings.udp_timeout,
            tcp_timeout=self.settings.tcp_timeout,
            pool=self.settings.upstream_sockets,
            socket_uses=self.settings.upstream_socket_uses,
        )
        self._make = socket_maker
        self._metrics = metrics
        self._clock = clock
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections: set[asyncio.StreamWriter] = set()
        self._forwards = 0  # upstream exchanges in flight
        self._inflight: dict[tuple[Key, bool], asyncio.Future[Answer | None]] = {}
        self.udp_address: tuple[str, int] | None = None
        self.tcp_address: tuple[str, int] | None = None

    # -- life --------------------------------------------------------------------------------------
    async def start(self, sockets: Sequence[socket.socket] = ()) -> None:
        """Serve on `sockets` when given: bound UDP sockets and listening TCP sockets, such as
        the marked ones zt.capture.netns.open_dns_sockets makes in a pod (the server owns them
        from now on, also when start fails). Else on a UDP and a TCP socket of `socket_maker`
        bound to `settings.address:port`."""
        loop = asyncio.get_running_loop()
        pending = list(sockets)
        try:
            if not pending:
                udp = self._bound(socket.SOCK_DGRAM)
                pending.append(udp)
                # the same port for TCP (port 0: the one UDP got), as clients expect (RFC 7766 §5)
                pending.append(self._bound(socket.SOCK_STREAM, udp.getsockname()[1]))
            while pending:
                sock = pending.pop(0)
                sock.setblocking(False)
                if sock.type == socket.SOCK_DGRAM:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Udp(self), sock=sock
                    )
                    self._udp.append(transport)
                    self.udp_address = self.udp_address or sock.getsockname()[:2]
                else:
                    self._tcp.append(await asyncio.start_server(self._serve_tcp, sock=sock))
                    self.tcp_address = self.tcp_address or sock.getsockname()[:2]
        except BaseException:
            for sock in pending:
                sock.close()
            await self.close()
            raise
        log.info("dns proxy for %s on %s udp+tcp", self.client_uid, self.udp_address)

    def _bound(self, kind: int, port: int | None = None) -> socket.socket:
        s = dataclasses.replace(self.settings, port=port) if port is not None else self.settings
        family = socket.AF_INET6 if ":" in s.address else socket.AF_INET
        try:
            sock = self._make(family, kind)
        except OSError as exc:
            raise DnsBindError(f"dns proxy socket: {exc.strerror}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.address, s.port))
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise DnsBindError(
                f"dns proxy: cannot bind {s.address}:{s.port} ({exc.strerror}), expected a "
                "free port in the pod"
            ) from None
        return sock

    async def close(self) -> None:
        """Stop serving and release every socket (listeners, connections, upstream queries)."""
        for transport in self._udp:
            transport.close()
        self._udp.clear()
        for server in self._tcp:
            server.close()
        self._tcp.clear()
        for writer in list(self._connections):
            writer.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.upstream.close()

    # -- queries -----------------------------------------------------------------------------------
    def udp_query(
        self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport
    ) -> None:
        """One datagram: answered at once when the core can, else in a task."""
        start = self._clock()
        command = self.core.handle(data, Transport.UDP, start)
        if isinstance(command, Forward):
            self._spawn(self._udp_forward(command, addr, start, transport))
            return
        wire = self._finish(command, start)
        if wire is not None and not transport.is_closing():
            transport.sendto(wire, addr)

    async def _udp_forward(
        self,
        forward: Forward,
        addr: tuple[str, int],
        start: float,
        transport: asyncio.DatagramTransport,
    ) -> None:
        wire = self._finish(await self._forward(forward), start)
        if wire is not None and not transport.is_closing():
            transport.sendto(wire, addr)

    async def _forward(self, forward: Forward) -> Reply:
        """Ask the upstreams; a question already being asked (the same name, type, class and
        DO and CD bits) waits for that exchange instead of starting another."""
        key = (forward.key, bool(forward.wire[3] & CD))
        pending = self._inflight.get(key)
        if pending is not None:
            # shielded: a waiter cancelled does not cancel the future the others wait on
            return self.core.forwarded(forward, await asyncio.shield(pending), self._clock())
        if self._forwards >= self.settings.max_forwards:
            reply = self.core.forwarded(forward, None, self._clock())
            return dataclasses.replace(reply, result="overloaded")
        self._forwards += 1
        # the waiters' future, settled by this exchange however it ends (cancelled: SERVFAIL)
        exchange: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = exchange
        answer = None
        try:
            answer = await self.upstream.resolve(forward)
        finally:
            self._forwards -= 1
            del self._inflight[key]
            exchange.set_result(answer)
        return self.core.forwarded(forward, answer, self._clock())

    def _finish(self, command: Reply | Drop, start: float) -> bytes | None:
        if isinstance(command, Drop):
            if self._metrics is not None:
                self._metrics.dropped(command.reason, self.client_uid)
            return None
        if self._metrics is not None:
            self._metrics.answered(
                qtype=command.qtype,
                result=command.result,
                seconds=self._clock() - start,
                qname=command.qname,
                client=self.client_uid,
                records=command.records,
            )
        return command.wire

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- TCP ---------------------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.settings.max_tcp_connections:
            writer.close()
            return
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while await self._tcp_one(reader, writer):
                pass
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, closed mid-message, reset: the connection ends, the server goes on
        finally:
            self._connections.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tcp_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        idle = self.settings.tcp_idle_timeout
        async with asyncio.timeout(idle):
            head = await reader.readexactly(LENGTH.size)
        (size,) = LENGTH.unpack(head)
        async with asyncio.timeout(idle):
            data = await reader.readexactly(size)
        start = self._clock()
        command = self.core.handle(data, Transport.TCP, start)
        if isinstance(command, Forward):
            command = await self._forward(command)
        wire = self._finish(command, start)
        if wire is not None:
            writer.write(LENGTH.pack(len(wire)) + wire)
            await writer.drain()
        return True
