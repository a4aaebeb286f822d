"""The HBONE server: TLS + HTTP/2 CONNECT accepted by zt's accept loop; every CONNECT is served
by the inbound flow (zt/proxy/inbound.py: admit, dial, answer, relay), whoever runs the server
(a pod's :15008, `zt hbone serve`, the tests, the bench)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import cast

from zt.addr import SocketAddr, from_sockaddr
from zt.errors import ZtError
from zt.hbone.settings import HboneSettings
from zt.identity.spiffe import SpiffeId
from zt.proxy.accept import (
    DEFAULT_LIMITS,
    AcceptLimits,
    AcceptLoop,
    AcceptMetrics,
    ConnectionGroup,
    listening_socket,
    serve_tls,
)
from zt.proxy.driver import HboneDriver, PeerCheck
from zt.proxy.inbound import InboundFlow
from zt.proxy.stream import HboneStream
from zt.telemetry.ratelog import RateLimitedLogger

log = logging.getLogger("zt.proxy.server")
# Each refused peer is one line naming its address and the reason; keyed by reason and client
# IP, so a client repeating the same refused handshake costs one line per interval (with a count).
refusal_log = RateLimitedLogger(log)


def peer_address(driver: HboneDriver) -> str:
    """The client's `ip:port` as its socket saw it ("?" once that is unknown)."""
    name = driver.transport.get_extra_info("peername") if driver.transport is not None else None
    return str(from_sockaddr(name)) if isinstance(name, tuple) else "?"


RECENT = 64  # how many recent refusals are kept for inspection


class HboneServer:
    """Accepts HBONE connections; one `HboneDriver` per TLS connection, one task per tunnel."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        peer_check: PeerCheck,
        flow: InboundFlow | None = None,
        settings: HboneSettings | None = None,
        on_limit: Callable[[str], None] | None = None,
        on_connection: Callable[[HboneDriver], None] | None = None,
    ) -> None:
        """`flow` serves every CONNECT (default: admit all, dial the authority from this host).
        `on_limit(name)` is called for every limit a peer goes past (zt/hbone/limits.py names;
        e.g. a node's metric); `on_connection(driver)` once per connection, at its first CONNECT
        (a pool's spare connection or a probe that never tunnels is not counted)."""
        self._context = context
        self.flow = flow or InboundFlow()
        self._peer_check = peer_check
        self._settings = settings
        self._server: asyncio.AbstractServer | None = None
        self.drivers: set[HboneDriver] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0  # TLS handshakes that passed the peer check
        # The last peer checks that failed after TLS (bounded: a node may be probed endlessly).
        self.peer_refusals: deque[BaseException] = deque(maxlen=RECENT)
        # Limits peers went past, by name (zt/hbone/limits.py), summed over connections.
        self.limit_hits: Counter[str] = Counter()
        self._on_limit = on_limit
        self._on_connection = on_connection
        self._tunnelled: weakref.WeakSet[object] = weakref.WeakSet()

    @property
    def statuses(self) -> Counter[int]:
        """CONNECT answers given, by status."""
        return self.flow.statuses

    @property
    def tunnels(self) -> int:
        return self.flow.tunnels

    async def start(
        self,
        listen: SocketAddr,
        *,
        reuse_port: bool = False,
        limits: AcceptLimits = DEFAULT_LIMITS,
        metrics: AcceptMetrics | None = None,
    ) -> SocketAddr:
        """Listen on `listen` (port 0 picks one); return the bound address. `reuse_port`: join
        an SO_REUSEPORT group, so several worker processes share the port. `limits`: the
        handshake deadline and the caps of zt/proxy/accept.py."""
        sock = listening_socket(listen, reuse_port=reuse_port)
        return await self.start_on(sock, group=ConnectionGroup("", limits), metrics=metrics)

    async def start_on(
        self,
        sock: socket.socket,
        *,
        group: ConnectionGroup | None = None,
        metrics: AcceptMetrics | None = None,
    ) -> SocketAddr:
        """Serve on an already listening socket (e.g. one opened inside a pod's netns), within
        `group`'s caps (a pod's listeners share one): zt's accept loop, not asyncio's
        (zt/proxy/accept.py: handshake deadline, half-open caps, EMFILE backoff, keepalive)."""
        group = group or ConnectionGroup()
        serve = serve_tls(
            self._make_driver, self._context, ended=lambda d: d.closed, limits=group.limits
        )
        self._server = AcceptLoop(
            sock, serve, group=group, pre_auth=True, metrics=metrics, name="hbone"
        )
        return from_sockaddr(sock.getsockname())

    def _make_driver(self) -> HboneDriver:
        driver = HboneDriver(
            "server",
            settings=self._settings,
            peer_check=self._peer_check,
            on_request=self._serve_stream,
            on_limit=self._limit_hit,
        )
        driver.ready.add_done_callback(lambda f: self._accepted(driver, f))
        return driver

    def _accepted(self, driver: HboneDriver, ready: asyncio.Future[SpiffeId | None]) -> None:
        if ready.cancelled() or ready.exception() is not None:
            exc = None if ready.cancelled() else ready.exception()
            address = peer_address(driver)
            reason = (
                exc.reason if isinstance(exc, ZtError)
                else "cancelled" if exc is None
                else type(exc).__name__
            )  # fmt: skip
            refusal_log.info(
                f"peer:{reason}:{address.rpartition(':')[0]}",
                "HBONE connection from %s refused (%s): %s", address, reason, exc,
            )  # fmt: skip
            if exc is not None:
                self.peer_refusals.append(exc)
            return
        self.connections_accepted += 1
        self.drivers.add(driver)
        driver.closed.add_done_callback(lambda _: self.drivers.discard(driver))

    def _limit_hit(self, limit: str) -> None:
        self.limit_hits[limit] += 1
        if self._on_limit is not None:
            self._on_limit(limit)

    def _serve_stream(self, stream: HboneStream) -> None:
        driver = stream.driver
        if self._on_connection is not None and driver not in self._tunnelled:
            self._tunnelled.add(driver)  # weak: a closed connection leaves on its own
            self._on_connection(cast(HboneDriver, driver))
        # The driver cancels this task if the peer resets the stream before it is answered.
        stream.serve_with(self._spawn(self.flow.tunnel(stream)))

    @property
    def live_tunnels(self) -> int:
        """CONNECTs being served: admitted, dialing or relaying."""
        return len(self._tasks)

    def _spawn(self, coro: Awaitable[object]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(_discard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, deadline: float = 5.0) -> None:
        """Stop accepting, GOAWAY every connection, wait up to `deadline` s, then abort the rest."""
        if self._server is not None:
            self._server.close()
        for driver in list(self.drivers):
            driver.start_drain(deadline)
        waits = [d.closed for d in self.drivers]
        if waits:
            await asyncio.wait(waits, timeout=deadline + 1.0)
        for driver in list(self.drivers):
            driver.close("shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def _discard(coro: Awaitable[object]) -> None:
    await coro
