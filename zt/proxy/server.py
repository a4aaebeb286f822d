"""The HBONE server: TLS + HTTP/2 CONNECT, an admission hook, the upstream dial, the relay.

docs/design.md §2: Responses: 200 once policy passed **and** the upstream socket is connected; 400
malformed request [...]; 401 policy denied; 503 unknown destination or upstream unreachable (10 s
dial timeout). After 200, failures become RST_STREAM. Malformed requests are answered by the core.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from zt.addr import SocketAddr, from_sockaddr
from zt.errors import ZtError
from zt.hbone.errors import UpstreamUnreachable
from zt.hbone.request import ConnectRequest
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
    wait_writable,
)
from zt.proxy.driver import HboneDriver, PeerCheck
from zt.proxy.errors import InternalError, StreamResetError
from zt.proxy.relay import TcpRelay
from zt.proxy.stream import HboneStream
from zt.sockopt import set_keepalive
from zt.telemetry.ratelog import RateLimitedLogger

log = logging.getLogger("zt.proxy.server")
# Each refused client is one line naming its address and the reason; keyed by reason and client
# IP, so a client repeating the same refused request costs one line per interval (with a count).
refusal_log = RateLimitedLogger(log)


def peer_address(driver: HboneDriver) -> str:
    """The client's `ip:port` as its socket saw it ("?" once that is unknown)."""
    name = driver.transport.get_extra_info("peername") if driver.transport is not None else None
    return str(from_sockaddr(name)) if isinstance(name, tuple) else "?"


DIAL_TIMEOUT = 10.0
RECENT = 64  # how many recent refusals are kept for inspection


@dataclass(frozen=True)
class Admission:
    """The admission hook's answer: allowed, or denied with the CONNECT status and a short reason."""

    allowed: bool
    status: int = 200
    reason: str = ""

    @classmethod
    def allow(cls) -> Admission:
        return cls(True)

    @classmethod
    def deny(cls, error: ZtError) -> Admission:
        """Deny with the status and reason the error class carries (e.g. PolicyDenied → 401)."""
        return cls(False, error.http_status, error.reason)


# async (peer identity, request) -> Admission
AdmissionHook = Callable[[SpiffeId, ConnectRequest], Awaitable[Admission]]
# A connected TCP socket to the destination (the inbound proxy makes it inside the pod's netns).
Upstream = socket.socket
Dialer = Callable[[ConnectRequest], Awaitable[Upstream]]


async def allow_all(peer: SpiffeId, request: ConnectRequest) -> Admission:
    return Admission.allow()


async def dial_authority(request: ConnectRequest) -> Upstream:
    """The standalone server's dialer: connect to the `:authority` itself.

    A non-blocking `connect()` and one wait for writability (per-tunnel cost, docs/PERFORMANCE.md), instead
    of `loop.sock_connect`, which also resolves the address it is given (~20 µs a dial here)."""
    ip, port = request.authority
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    sock.setblocking(False)
    try:
        set_keepalive(sock)  # a vanished upstream must not hold the tunnel for hours
        err = sock.connect_ex((str(ip), port))
        if err == errno.EINPROGRESS:
            await wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


class HboneServer:
    """Accepts HBONE connections; one `HboneDriver` per TLS connection, one task per tunnel."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        peer_check: PeerCheck,
        admission: AdmissionHook = allow_all,
        dialer: Dialer = dial_authority,
        settings: HboneSettings | None = None,
        dial_timeout: float = DIAL_TIMEOUT,
        handler: Callable[[HboneStream], None] | None = None,
        on_limit: Callable[[str], None] | None = None,
    ) -> None:
        """`handler`, when given, takes over every CONNECT (the node's own admission, dial and
        relay); otherwise `admission` + `dialer` + relay serve it. `on_limit(name)` is called
        for every limit a peer goes past (zt/hbone/limits.py names; e.g. a node's metric)."""
        self._context = context
        self._handler = handler
        self._peer_check = peer_check
        self._admission = admission
        self._dialer = dialer
        self._settings = settings
        self.dial_timeout = dial_timeout
        self._server: asyncio.AbstractServer | None = None
        self.drivers: set[HboneDriver] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_accepted = 0  # TLS handshakes that passed the peer check
        # The last peer checks that failed after TLS (bounded: a node may be probed endlessly).
        self.peer_refusals: deque[BaseException] = deque(maxlen=RECENT)
        self.statuses: Counter[int] = Counter()  # CONNECT answers given, by status
        self.tunnels = 0
        # Limits peers went past, by name (zt/hbone/limits.py), summed over connections.
        self.limit_hits: Counter[str] = Counter()
        self._on_limit = on_limit

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
        on_request = self._handler or self._serve_stream
        driver = HboneDriver(
            "server",
            settings=self._settings,
            peer_check=self._peer_check,
            on_request=on_request,
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
        # The driver cancels this task if the peer resets the stream before it is answered.
        stream.serve_with(self._spawn(self._serve(stream)))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, stream: HboneStream) -> None:
        """Admit, dial, answer, relay. A failure before the answer becomes its status (the
        error's `http_status`); after the 200 it becomes RST_STREAM (docs/design.md §2)."""
        try:
            upstream = await self._admit_and_dial(stream)
        except StreamResetError:
            return  # the client or the connection went away first
        except Exception as exc:  # the hook or dialer of another room failed: answer, don't hang
            error = exc if isinstance(exc, ZtError) else InternalError(repr(exc))
            log.warning(
                "tunnel %s from %s refused: %s",
                stream.request.authority_text, peer_address(stream.driver), exc,
            )  # fmt: skip
            self._answer_error(stream, error)
            return
        if upstream is None:
            return
        # The upstream socket becomes a transport whose protocol is the relay's TCP side (no
        # StreamReader in between); it keeps what the target sends before the 200.
        tcp = TcpRelay()
        try:
            await stream.driver.loop.create_connection(lambda: tcp, sock=upstream)
        except OSError as exc:  # the socket died between the dial and now
            upstream.close()
            self._answer_error(stream, UpstreamUnreachable(str(exc)))
            return
        except asyncio.CancelledError:  # the client reset the stream meanwhile
            upstream.close()
            raise
        driver = stream.driver
        corked = driver.cork()  # the 200 and what the target already sent: one TLS record
        try:
            self._respond(stream, 200)  # only now: the upstream socket is connected
        except StreamResetError:  # the client gave up while we dialed
            if tcp.transport is not None:
                tcp.transport.close()
            return
        else:
            self.tunnels += 1
            # From here on the relay runs in callbacks: this task ends (no wake-up at the
            # tunnel's end); shutdown() resets what is left through the drivers' streams.
            tcp.begin(stream)
        finally:
            if corked:
                driver.uncork()

    async def _admit_and_dial(self, stream: HboneStream) -> Upstream | None:
        assert stream.driver.peer is not None  # the peer check ran before any stream
        decision = await self._admission(stream.driver.peer, stream.request)
        if not decision.allowed:
            address = peer_address(stream.driver)
            refusal_log.info(
                f"connect:{decision.reason}:{address.rpartition(':')[0]}",
                "CONNECT %s from %s (%s) refused: %d %s",
                stream.request.authority_text, address, stream.driver.peer, decision.status,
                decision.reason,
            )  # fmt: skip
            self._respond(stream, decision.status, decision.reason)
            return None
        try:
            async with asyncio.timeout(self.dial_timeout):
                return await self._dialer(stream.request)
        except (OSError, TimeoutError) as exc:
            self._answer_error(
                stream, UpstreamUnreachable(f"{stream.request.authority_text}: {exc}")
            )
            return None

    def _answer_error(self, stream: HboneStream, error: ZtError) -> None:
        if stream.was_reset is None and not stream.driver.closed.done():
            with contextlib.suppress(StreamResetError):
                self._respond(stream, error.http_status, error.reason)

    def _respond(self, stream: HboneStream, status: int, reason: str = "") -> None:
        stream.driver.respond(stream, status, reason)
        self.statuses[status] += 1

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
