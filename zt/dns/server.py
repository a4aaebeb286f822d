"""One pod's DNS proxy: a UDP and a TCP server on <address>:15053 around one `DnsCore`.

The node makes one `DnsServer` per pod it serves and hands it a socket maker that creates
sockets in the pod's network namespace (`PodNet`); binding and all I/O then happen here, on the
event loop. Upstream sockets are made in zt's own namespace unless the caller passes another
maker: the node's resolv.conf names servers reachable from the node.

Every pod shares the node's one event loop, so a pod's queries are budgeted before anything
parses them (`zt/dns/ratelimit.py`): past it, UDP queries are dropped (the client retries) and a
TCP connection stops being read until the budget allows its next query.

TCP follows RFC 7766: each message behind a two-byte length (§8), several queries per connection
processed concurrently and answered as each is ready (§6.2.1.1; the ids tell them apart), at most
`tcp_pipeline` of one connection in flight (past it, the connection is not read), a connection
idle for `tcp_idle_timeout` closed (§6.2.3; ztunnel waits 5 s), and one whose client does not read
its answers for `tcp_write_timeout` aborted. Connections and forwarded queries in flight are
capped per pod.
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
from zt.dns.errors import DnsBindError
from zt.dns.metrics import DnsMetrics
from zt.dns.ratelimit import LimitLog, RateLimit, TokenBucket
from zt.dns.raw import Answer
from zt.dns.upstream import (
    LENGTH,
    POOL_SOCKETS,
    SOCKET_USES,
    SocketMaker,
    Upstream,
    UpstreamClient,
)
from zt.dns.wire import Transport
from zt.sockopt import make_socket
from zt.state.snapshot import Snapshot

log = logging.getLogger("zt.dns")
DNS_PROXY_PORT = 15053
PAIR_TRIES = 8  # port 0: fresh ports tried for a UDP+TCP pair before giving up


@dataclass(frozen=True)
class ServerSettings:
    address: str = "127.0.0.1"
    port: int = DNS_PROXY_PORT
    tcp_idle_timeout: float = 5.0
    max_tcp_connections: int = 64
    tcp_pipeline: int = 16  # queries of one TCP connection in flight
    tcp_write_timeout: float = 5.0  # a client that reads no answer for this long is cut off
    max_forwards: int = 256  # upstream exchanges in flight; past it, SERVFAIL at once
    udp_timeout: float = 2.0
    tcp_timeout: float = 5.0
    upstream_sockets: int = POOL_SOCKETS  # open UDP sockets per upstream
    upstream_socket_uses: int = SOCKET_USES  # queries per socket before a new one replaces it
    core: CoreSettings = field(default_factory=CoreSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    rate_limit: RateLimit | None = field(default_factory=RateLimit)  # None: unlimited (benches)


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
        socket_maker: SocketMaker = make_socket,  # keepalive on TCP (zt/sockopt.py)
        metrics: DnsMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        client_uid: str,
        settings: ServerSettings | None = None,
        upstream_socket_maker: SocketMaker = make_socket,  # keepalive on TCP (zt/sockopt.py)
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
        self._handlers: set[asyncio.Task[Any]] = set()  # asyncio's, one per TCP connection
        self._forwards = 0  # upstream exchanges in flight
        self._inflight: dict[Key, asyncio.Future[Answer | None]] = {}
        limit = self.settings.rate_limit
        self._budget = TokenBucket(limit, clock()) if limit is not None else None
        self._limit_log = LimitLog()
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
                pending = self._bound_pair()
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
            self.udp_address = self.tcp_address = None  # start may be tried again
            raise
        log.info("dns proxy for %s on %s udp+tcp", self.client_uid, self.udp_address)

    def _bound_pair(self) -> list[socket.socket]:
        """A UDP and a TCP socket on one port, as clients expect (RFC 7766 §5). With port 0 the
        TCP socket takes the port UDP got, which another TCP socket may hold already: then try
        a new port (a few times), not fail."""
        tries = PAIR_TRIES if self.settings.port == 0 else 1
        for attempt in range(tries):
            udp = self._bound(socket.SOCK_DGRAM)
            try:
                return [udp, self._bound(socket.SOCK_STREAM, udp.getsockname()[1])]
            except DnsBindError:
                udp.close()
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

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
            writer.transport.abort()  # close() would wait for a client that does not read
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._handlers:
            await asyncio.wait(self._handlers)  # done once their connection's task is
        self.upstream.close()

    # -- queries -----------------------------------------------------------------------------------
    def udp_query(
        self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport
    ) -> None:
        """One datagram: answered at once when the core can, else in a task; dropped when the
        pod is over its budget (RFC 1035 §4.2.1: UDP clients retry)."""
        start = self._clock()
        if self._budget is not None and not self._budget.take(start):
            self._over_budget(Transport.UDP, start)
            return
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
        """Ask the upstreams; a question already being asked (the same cache key: name, type,
        class, DO, RD and CD) waits for that exchange instead of starting another."""
        key = forward.key
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

    def _over_budget(self, transport: Transport, now: float) -> None:
        if self._metrics is not None:
            self._metrics.over_budget(transport.value)
        udp = transport is Transport.UDP
        line = self._limit_log.note(now, dropped=int(udp), delayed=int(not udp))
        if line is not None and self._budget is not None:
            limit = self._budget.limit
            log.warning("dns proxy for %s over its rate limit (%g queries/s, burst %g): %s in "
                        "the last %g s", self.client_uid, limit.rate, limit.burst, line,
                        self._limit_log.every)  # fmt: skip

    def _tcp_budget(self) -> float:
        """Seconds to wait before the next TCP query (0: at once). Delayed rather than REFUSED:
        the connection is simply not read meanwhile, so the kernel's window slows the client at
        no cost to the loop, and a stub resolver that took REFUSED would fail the lookup or ask
        the same proxy again at once (a pod has one nameserver)."""
        if self._budget is None:
            return 0.0
        now = self._clock()
        wait = self._budget.reserve(now)
        if wait > 0:
            self._over_budget(Transport.TCP, now)
        return wait

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
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        # close() cancels the connection's own task, never asyncio's handler: asyncio (3.11) logs
        # a handler ending cancelled as an error
        task = asyncio.ensure_future(_TcpConnection(self, reader, writer).serve())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait([task])
        finally:
            self._connections.discard(writer)
            self._handlers.discard(handler)


class _TcpConnection:
    """One client's TCP connection: a loop that reads and dispatches queries, and a task per
    forwarded one that writes its answer when it comes."""

    def __init__(
        self, server: DnsServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        self.slots = asyncio.Semaphore(self.settings.tcp_pipeline)
        self.pending: set[asyncio.Task[None]] = set()
        self.stalled = False  # the client stopped reading: abort, unsent answers and all

    async def serve(self) -> None:
        try:
            while True:
                await self.slots.acquire()  # past the cap, unread queries wait in the socket
                data = await self._read()
                wait = self.server._tcp_budget()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._dispatch(data)
        except asyncio.IncompleteReadError:
            # the client is done sending: what it asked is still answered (each bounded by the
            # upstream and write timeouts)
            if self.pending:
                await asyncio.wait(self.pending)
        except (TimeoutError, ConnectionError):
            pass  # idle, stalled, reset: the connection ends, the server goes on
        finally:
            await self._close()

    async def _close(self) -> None:
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        if not self.stalled:
            self.writer.close()  # sends what is buffered first, if the client reads it in time
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(self.settings.tcp_write_timeout):
                    await self.writer.wait_closed()
                    return
        self.writer.transport.abort()

    async def _read(self) -> bytes:
        """The next message. RFC 7766 §6.2.3: the idle timeout counts only while no query is
        outstanding; a message begun must then arrive within the same time."""
        idle = self.settings.tcp_idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    head = await self.reader.readexactly(LENGTH.size)
                break
            except TimeoutError:
                if not self.pending:
                    raise
        (size,) = LENGTH.unpack(head)
        async with asyncio.timeout(idle):
            return await self.reader.readexactly(size)

    async def _dispatch(self, data: bytes) -> None:
        server = self.server
        start = server._clock()
        command = server.core.handle(data, Transport.TCP, start)
        if isinstance(command, Forward):
            task = asyncio.ensure_future(self._forward(command, start))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            return
        try:
            await self._send(server._finish(command, start))
        finally:
            self.slots.release()

    async def _forward(self, forward: Forward, start: float) -> None:
        try:
            reply = await self.server._forward(forward)
            await self._send(self.server._finish(reply, start))
        except (TimeoutError, ConnectionError):
            self.writer.transport.abort()  # the reading loop then sees the end and cleans up
        finally:
            self.slots.release()

    async def _send(self, wire: bytes | None) -> None:
        if wire is None or self.writer.is_closing():
            return
        self.writer.write(LENGTH.pack(len(wire)) + wire)  # one write: answers never interleave
        try:
            async with asyncio.timeout(self.settings.tcp_write_timeout):
                await self.writer.drain()
        except TimeoutError:
            self.stalled = True
            raise
