"""Accept loops for zt's listeners, and everything that happens to a connection before it is
authenticated.

asyncio's own accept loop (`loop.create_server`) was measured failing three ways here: with the
fd table full it retries accept() at once and logs one traceback per failure (nofile 1024 and a
connection flood: EMFILE and 45 MB of tracebacks in 30 s); a TLS connection gets its
`SSLProtocol` (Python 3.11: a 256 KiB buffer each) at accept time, so 1,000 connections that never
send a ClientHello cost +300 MB; and those live for asyncio's default handshake timeout (60 s).

Rules this module keeps:
- Every accepted connection holds one slot of its `ConnectionGroup` (a pod's listeners share one)
  from accept() to its end; a TLS connection also holds a half-open slot, per source IP and in
  total, until its handshake and peer check are done. Past a cap the connection is closed at once
  with a reset and counted: nothing waits in user space.
- Before authentication a connection costs a socket and one small task: the TLS protocol is made
  only when the first byte arrives, and the whole stage (first byte, handshake, peer check) has
  one deadline.
- A failed accept() for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) closes a reserve fd to
  accept and reset the waiting connection, reopens it, and stops reading the listener for a
  growing delay: no busy loop, one rate-limited log line.
- Nothing raised for one connection reaches the event loop: it is counted and logged
  rate-limited. `loop_exception_handler` does the same for what reaches the loop anyway.
- Every accepted socket gets TCP keepalive (`set_keepalive`).

The decisions are pure: `ConnectionGroup` (caps) and `Backoff` (schedule, time as a parameter).
`AcceptLoop` is the thin adapter that reads the clock, calls accept() and spawns the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, cast

from zt.addr import SocketAddr
from zt.errors import UsageError, ZtError
from zt.proxy import tlssocket
from zt.proxy.tcpside import HeldTcp
from zt.sockopt import KEEPALIVE, Keepalive, set_keepalive
from zt.telemetry.metrics import Registry
from zt.telemetry.ratelog import RateLimitedLogger

log = logging.getLogger("zt.proxy.accept")
ratelog = RateLimitedLogger(log)


# -- limits ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcceptLimits:
    """What one listener group (a pod's listeners; `zt hbone serve`'s one listener) allows."""

    # Seconds from accept() to a checked peer certificate: first byte, TLS handshake, peer check.
    # A mesh peer needs milliseconds (one round trip and two ECDSA P-256 operations); asyncio's
    # default is 60 s (asyncio.constants.SSL_HANDSHAKE_TIMEOUT), which let idle sockets pile up.
    handshake_timeout: float = 5.0
    # Connections accepted but not yet authenticated, from one source IP. A peer node dials one
    # connection per (source identity, destination identities, address) at a time, so a source
    # (a pod IP) has a handful in flight; 64 leaves room for bursts and benches on loopback.
    half_open_per_source: int = 64
    # The same, over all sources. Each connection that sent a first byte carries a TLS protocol
    # (measured: 316 KiB on asyncio, 58 KiB on uvloop), so this bounds it to ~40 MiB; and more
    # handshakes in flight than a Python node completes in about a second is overload anyway.
    half_open_total: int = 128
    # Open connections per group (a pod: all its listeners). Each costs at least one fd, a relayed
    # one two; 8,192 per pod is far above what an app's node proxy carries and far below what
    # would exhaust the node (ztunnel has no such cap; Envoy's is the overload manager's
    # `global_downstream_max_connections`, unset by default).
    max_connections: int = 8192
    # accept() calls per readiness event: one listener cannot starve the loop (asyncio uses the
    # listen backlog here; a burst of 1,024 SYNs would mean 1,024 accepts in one callback).
    accept_batch: int = 64
    # Pause of a listener after accept() failed for want of fds or memory: doubles from
    # `backoff_initial` up to `backoff_max` seconds while failures continue, resets on success.
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    keepalive: Keepalive | None = KEEPALIVE

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not value > 0:
                raise UsageError(f"accept limits: {f.name}: got {value!r}, expected > 0")
        if self.backoff_max < self.backoff_initial:
            raise UsageError(
                f"accept limits: backoff_max: got {self.backoff_max!r}, "
                f"expected >= backoff_initial ({self.backoff_initial!r})"
            )


DEFAULT_LIMITS = AcceptLimits()


class PreAuthTimeout(ZtError):
    """A connection did not complete its TLS handshake and peer check within the deadline."""

    http_status = 408
    reason = "handshake_timeout"


# Why a connection was refused at accept(): label values of zt_accept_refused_total.
REFUSED_GROUP = "max_connections"
REFUSED_SOURCE = "half_open_per_source"
REFUSED_TOTAL = "half_open_total"
REFUSED_RESOURCES = "fd_exhausted"  # accepted with the reserve fd and reset at once


# -- pure decisions ----------------------------------------------------------------------------
@dataclass
class ConnectionGroup:
    """The connections of one listener group: caps and counts, no I/O. `admit()` takes the
    slots a new connection needs or says why not; `authenticated()` and `release()` give them
    back (each at most once per connection: the adapter's `Ticket` guarantees it)."""

    name: str = ""
    limits: AcceptLimits = DEFAULT_LIMITS
    open: int = 0
    half_open: int = 0
    _by_source: Counter[str] = field(default_factory=Counter)

    def admit(self, source: str, *, pre_auth: bool) -> str | None:
        """Take a slot for a connection from `source` (an IP); None, or the refusal reason."""
        if self.open >= self.limits.max_connections:
            return REFUSED_GROUP
        if pre_auth:
            if self._by_source[source] >= self.limits.half_open_per_source:
                return REFUSED_SOURCE
            if self.half_open >= self.limits.half_open_total:
                return REFUSED_TOTAL
            self._by_source[source] += 1
            self.half_open += 1
        self.open += 1
        return None

    def authenticated(self, source: str) -> None:
        """The connection from `source` passed its handshake (or ended): its half-open slot is free."""
        self.half_open -= 1
        left = self._by_source[source] - 1
        if left > 0:
            self._by_source[source] = left
        else:
            del self._by_source[source]  # the table holds only sources with connections in flight

    def release(self) -> None:
        self.open -= 1

    def half_open_from(self, source: str) -> int:
        return self._by_source.get(source, 0)


@dataclass
class Backoff:
    """When a listener that failed to accept for want of resources may try again: `failed(now)`
    returns that instant, each consecutive failure doubling the pause up to `maximum`;
    `succeeded()` starts over."""

    initial: float
    maximum: float
    failures: int = 0

    def failed(self, now: float) -> float:
        delay = min(self.maximum, self.initial * 2.0**self.failures)
        self.failures += 1
        return now + delay

    def succeeded(self) -> None:
        self.failures = 0


RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept(2): errors of the one connection being accepted (it died in the queue); Linux also
# passes on "already-pending network errors on the new socket". Try the next one.
CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
        errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH,
        errno.ECONNRESET, errno.ETIMEDOUT,
    }
)  # fmt: skip


# -- metrics -----------------------------------------------------------------------------------
class AcceptMetrics:
    """Counters of accept loops; with a `Registry`, also exported (labelled by group = pod).
    Without one (tests, `zt hbone serve`) the same numbers are in `counts`."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.counts: Counter[str] = Counter()  # every event below, summed over groups
        self._registry = registry
        if registry is not None:
            self._refused = registry.counter(
                "zt_accept_refused_total",
                "Connections closed at accept: over a cap, or accepted with the reserve fd",
                ("pod", "reason"),
            )
            self._open = registry.gauge(
                "zt_connections_open", "Connections open on a pod's listeners", ("pod",)
            )
            self._timeouts = registry.counter(
                "zt_handshake_timeouts_total",
                "Connections closed for not authenticating within the handshake deadline",
                ("pod",),
            )
            self._errors = registry.counter(
                "zt_connection_errors_total",
                "Connections that ended on an error before or while being served, by kind",
                ("pod", "kind"),
            )
            self._accept_errors = registry.counter(
                "zt_accept_errors_total", "accept() failures, by errno", ("pod", "errno")
            )
            self._loop_errors = registry.counter(
                "zt_loop_exceptions_total",
                "Exceptions that reached the event loop's exception handler, by type",
                ("kind",),
            )

    def refused(self, group: str, reason: str) -> None:
        self.counts[f"refused:{reason}"] += 1
        if self._registry is not None:
            self._refused.inc(labels={"pod": group, "reason": reason})

    def opened(self, group: ConnectionGroup) -> None:
        if self._registry is not None:
            self._open.set(group.open, labels={"pod": group.name})

    def handshake_timeout(self, group: str) -> None:
        self.counts["handshake_timeout"] += 1
        if self._registry is not None:
            self._timeouts.inc(labels={"pod": group})

    def error(self, group: str, kind: str) -> None:
        self.counts[f"error:{kind}"] += 1
        if self._registry is not None:
            self._errors.inc(labels={"pod": group, "kind": kind})

    def loop_exception(self, kind: str) -> None:
        self.counts[f"loop:{kind}"] += 1
        if self._registry is not None:
            self._loop_errors.inc(labels={"kind": kind})

    def accept_error(self, group: str, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        self.counts[f"accept_error:{name}"] += 1
        if self._registry is not None:
            self._accept_errors.inc(labels={"pod": group, "errno": name})


# -- the adapter -------------------------------------------------------------------------------
BACKLOG = 1024  # listen(2) backlog; the kernel caps it at net.core.somaxconn


def listening_socket(listen: SocketAddr, *, reuse_port: bool = False) -> socket.socket:
    """A TCP listener on `listen` as `loop.create_server` makes it (SO_REUSEADDR; an IPv6
    address listens on IPv6 only), non-blocking, ready for an `AcceptLoop`."""
    family = socket.AF_INET6 if listen.ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(listen.ip), listen.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- accept loop -------------------------------------------------------------------------------
class Ticket:
    """One accepted connection's hold on its group's slots; each is given back once."""

    __slots__ = ("_group", "_half_open", "_metrics", "_open", "_source", "handed_over")

    def __init__(
        self, group: ConnectionGroup, source: str, half_open: bool, metrics: AcceptMetrics
    ) -> None:
        self._group = group
        self._source = source
        self._half_open = half_open
        self._open = True
        self._metrics = metrics
        # The socket belongs to an asyncio transport from here on: closing its fd by hand then
        # would free a number the loop still watches (the next socket would reuse it).
        self.handed_over = False

    @property
    def half_open(self) -> bool:
        return self._half_open

    def authenticated(self) -> None:
        if self._half_open:
            self._half_open = False
            self._group.authenticated(self._source)

    def release(self) -> None:
        self.authenticated()
        if self._open:
            self._open = False
            self._group.release()
            self._metrics.opened(self._group)


# Serves one accepted, non-blocking socket until the connection ends (it owns the socket).
Serve = Callable[[socket.socket, Ticket], Awaitable[None]]


class AcceptLoop(asyncio.AbstractServer):
    """Accepts on `sock` (a listening socket; the loop owns it from now on) and runs `serve`
    for each connection in its own task, within `group`'s caps. `pre_auth`: connections hold a
    half-open slot until `serve` calls `ticket.authenticated()` (TLS listeners)."""

    def __init__(
        self,
        sock: socket.socket,
        serve: Serve,
        *,
        group: ConnectionGroup | None = None,
        pre_auth: bool = False,
        metrics: AcceptMetrics | None = None,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.group = group or ConnectionGroup()
        self.limits = self.group.limits
        self.metrics = metrics or AcceptMetrics()
        self.name = name or self.group.name or "listener"
        self._serve = serve
        self._pre_auth = pre_auth
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._backoff = Backoff(self.limits.backoff_initial, self.limits.backoff_max)
        self._tasks: dict[asyncio.Task[None], Ticket] = {}
        self._resume: asyncio.TimerHandle | None = None
        self._reading = False
        self._closed = False
        self._done: asyncio.Future[None] = self._loop.create_future()
        sock.setblocking(False)
        _RESERVE.ensure()
        self._start_reading()

    # -- asyncio.AbstractServer ----------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting and close the listening socket. Connections still before
        authentication are cut; authenticated ones run on (their owners drain them)."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
        for task, ticket in list(self._tasks.items()):
            if ticket.half_open:  # not authenticated yet: nobody else will end it
                task.cancel()
        if not self._done.done():
            self._done.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._done)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed

    async def start_serving(self) -> None:
        return None  # serving from construction on

    async def serve_forever(self) -> None:
        await self.wait_closed()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self.sock,)

    @property
    def connections(self) -> int:
        """Connections whose task is still running (pre-authentication included)."""
        return len(self._tasks)

    # -- accepting -----------------------------------------------------------------------------
    def _start_reading(self) -> None:
        self._resume = None
        if not self._closed and not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self.sock.fileno())

    def _on_readable(self) -> None:
        for _ in range(self.limits.accept_batch):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if not self._accept_failed(exc):
                    return
                continue
            self._backoff.succeeded()
            self._admit(conn, address)

    def _accept_failed(self, exc: OSError) -> bool:
        """Count and handle a failed accept(); True when the next accept() may follow at once."""
        code = exc.errno or 0
        self.metrics.accept_error(self.group.name, code)
        if code in CONNECTION_ERRNOS:
            return True
        if code in RESOURCE_ERRNOS and _RESERVE.shed(self.sock):
            self.metrics.refused(self.group.name, REFUSED_RESOURCES)
        now = self._clock()
        delay = self._backoff.failed(now) - now
        ratelog.warning(
            f"accept:{self.name}:{code}",
            "%s: accept() failed (%s); pausing this listener for %.2f s",
            self.name, errno.errorcode.get(code, str(code)), delay,
        )  # fmt: skip
        self._stop_reading()
        self._resume = self._loop.call_later(delay, self._start_reading)
        return False

    def _admit(self, conn: socket.socket, address: Any) -> None:
        source = str(address[0]) if isinstance(address, tuple) else ""
        refusal = self.group.admit(source, pre_auth=self._pre_auth)
        if refusal is not None:
            _reset(conn)
            self.metrics.refused(self.group.name, refusal)
            ratelog.info(
                f"refused:{self.name}:{refusal}",
                "%s: connection from %s refused at accept (%s)", self.name, source, refusal,
            )  # fmt: skip
            return
        self.metrics.opened(self.group)
        ticket = Ticket(self.group, source, self._pre_auth, self.metrics)
        try:
            conn.setblocking(False)
            if self.limits.keepalive is not None:
                set_keepalive(conn, self.limits.keepalive)
        except OSError:  # the connection died between accept() and now
            conn.close()
            ticket.release()
            return
        task = self._loop.create_task(self._run(conn, ticket, source))
        self._tasks[task] = ticket
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _run(self, conn: socket.socket, ticket: Ticket, source: str) -> None:
        """Serve one connection; whatever it raises ends here, counted and rate-limited."""
        try:
            await self._serve(conn, ticket)
        except asyncio.CancelledError:
            if not ticket.handed_over:  # else the transport closes it (see Ticket.handed_over)
                _close_quietly(conn)
            raise
        except PreAuthTimeout:
            self.metrics.handshake_timeout(self.group.name)
            ratelog.info(
                f"timeout:{self.name}",
                "%s: connection from %s not authenticated within %g s; closed",
                self.name, source, self.limits.handshake_timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, EOFError) as exc:  # the peer's doing: refused handshake etc.
            self.metrics.error(self.group.name, "peer")
            ratelog.info(
                f"peer:{self.name}", "%s: connection from %s failed: %r", self.name, source, exc
            )
            _close_quietly(conn)
        except ZtError as exc:
            self.metrics.error(self.group.name, exc.reason)
            ratelog.info(
                f"zt:{self.name}:{exc.reason}", "%s: connection from %s: %s", self.name, source, exc
            )
            _close_quietly(conn)
        except Exception as exc:  # a bug in a handler: keep the loop (and the other connections)
            self.metrics.error(self.group.name, "internal")
            ratelog.warning(
                f"bug:{self.name}:{type(exc).__name__}",
                "%s: handler failed for a connection from %s: %s", self.name, source, _summary(exc),
            )  # fmt: skip
            _close_quietly(conn, reset=True)
        finally:
            ticket.release()


class _ReserveFd:
    """One fd held in reserve for the whole process (an open /dev/null), so that a listener
    out of fds can still accept, and reset, the connection at the head of its queue: the peer
    learns at once instead of waiting in the backlog, and the listener's readiness is consumed.
    Opened when the first accept loop starts."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def ensure(self) -> None:
        if self._fd is None:
            with contextlib.suppress(OSError):  # out of fds already: retried at the next shed
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def shed(self, listener: socket.socket) -> bool:
        """Free the reserve, accept one connection and reset it, take the reserve back; True
        when a connection was shed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            conn, _ = listener.accept()
        except OSError:
            shed = False
        else:
            _reset(conn)
            shed = True
        self.ensure()
        return shed


_RESERVE = _ReserveFd()


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER on, zero timeout): no FIN handshake, no TIME_WAIT kept here."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _close_quietly(conn: socket.socket, *, reset: bool = False) -> None:
    """Close a socket the serving code may already have handed to a transport (then fileno() is
    -1, or the transport closes it); a detached socket is left to its transport."""
    if conn.fileno() == -1:
        return
    if reset:
        _reset(conn)
    else:
        with contextlib.suppress(OSError):
            conn.close()


def _summary(exc: BaseException) -> str:
    """`Type: message at file:line` of the innermost frame: enough to find a bug, and one line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__name__}: {exc}{where}"


# -- ways to serve a connection ----------------------------------------------------------------
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def wait_readable(sock: socket.socket) -> None:
    """Until `sock` has a byte (or EOF/error) to read: nothing is allocated for it before."""
    await _wait_fd(sock, writable=False)


async def wait_writable(sock: socket.socket) -> None:
    """Until `sock` is writable (a non-blocking connect finished, either way)."""
    await _wait_fd(sock, writable=True)


async def _wait_fd(sock: socket.socket, *, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (
        loop.add_reader, loop.remove_reader)  # fmt: skip
    add(fd, _set_once, ready)
    try:
        await ready
    finally:
        remove(fd)


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def serve_tls(
    factory: Callable[[], _P],
    context: ssl.SSLContext,
    *,
    ended: Callable[[_P], Awaitable[None]],
    limits: AcceptLimits = DEFAULT_LIMITS,
    tls_on_socket: bool | None = None,
) -> Serve:
    """A TLS listener's connections: wait for the first byte, then the TLS handshake (the
    protocol's `connection_made` checks the peer), all within `limits.handshake_timeout`; then
    serve until `ended(protocol)` (e.g. `HboneDriver.closed`) is done. `tls_on_socket`: OpenSSL
    on the fd (zt/proxy/tlssocket.py) or asyncio's SSL protocol; None follows
    `tlssocket.used()`."""
    if tlssocket.used(tls_on_socket):
        return _serve_tls_on_socket(factory, context, ended=ended, limits=limits)

    async def serve(sock: socket.socket, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.handshake_timeout
        try:
            async with asyncio.timeout_at(deadline):
                await wait_readable(sock)
                # The handshake's own timeout as well: the TLS layer then aborts the transport.
                remaining = max(deadline - loop.time(), 0.01)
                # Our own reference: uvloop returns its SSLProtocol here, not the app's protocol.
                protocol = factory()
                ticket.handed_over = True
                await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=context, ssl_handshake_timeout=remaining
                )
        except TimeoutError:
            if not ticket.handed_over:
                _close_quietly(sock)
            elif (transport := getattr(protocol, "transport", None)) is not None:
                transport.abort()  # handshake done, peer check or deadline raced: cut it now
            raise PreAuthTimeout(
                f"not authenticated within {limits.handshake_timeout:g} s"
            ) from None
        except asyncio.CancelledError:  # the listener closed while this one was unauthenticated
            if ticket.handed_over and (tr := getattr(protocol, "transport", None)) is not None:
                tr.abort()
            raise
        except ConnectionAbortedError as exc:  # asyncio's name for its own handshake timeout
            if "handshake" in str(exc).lower():
                raise PreAuthTimeout(str(exc)) from None
            raise
        ticket.authenticated()
        await ended(protocol)

    return serve


def _serve_tls_on_socket(
    factory: Callable[[], _P],
    context: ssl.SSLContext,
    *,
    ended: Callable[[_P], Awaitable[None]],
    limits: AcceptLimits,
) -> Serve:
    """`serve_tls` with the TLS of zt/proxy/tlssocket.py: same stages, same deadline."""

    async def serve(sock: socket.socket, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.handshake_timeout
        tls: ssl.SSLSocket | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await wait_readable(sock)
                tls = tlssocket.wrap(context, sock, server_side=True)  # `sock` is detached now
                await tlssocket.handshake(tls)
        except TimeoutError:
            _close_quietly(tls if tls is not None else sock)
            raise PreAuthTimeout(
                f"not authenticated within {limits.handshake_timeout:g} s"
            ) from None
        except BaseException:  # the peer's TLS refusal goes up raw: _run counts it as "peer"
            _close_quietly(tls if tls is not None else sock)
            raise
        # The protocol's connection_made checks the peer (and aborts on a refusal) right here,
        # within the deadline: no await between the handshake and the check.
        protocol = factory()
        if not isinstance(protocol, asyncio.Protocol):  # _P's bound is BaseProtocol
            tls.close()
            raise TypeError(f"TLS on the socket serves an asyncio.Protocol, got {protocol!r}")
        try:
            transport = tlssocket.TlsSocketTransport(loop, tls, protocol)
        except BaseException:
            tls.close()
            raise
        ticket.handed_over = True
        transport.start()
        ticket.authenticated()
        await ended(protocol)

    return serve


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve_streams(handle: StreamHandler, *, limit: int = 64 * 1024) -> Serve:
    """A plaintext listener's connections as asyncio streams (what `asyncio.start_server` gives
    its callback). The connection ends with `handle`: a transport it left open is closed (reset
    when it raised)."""

    async def serve(sock: socket.socket, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        ticket.handed_over = True
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await _closing_after(transport, handle(reader, writer))

    return serve


async def _closing_after(transport: asyncio.BaseTransport, handled: Awaitable[None]) -> None:
    """Run a connection's handler; close what it left open (reset it when the handler raised)."""
    try:
        await handled
    except BaseException:
        if not transport.is_closing():
            cast(asyncio.Transport, transport).abort()
        raise
    if not transport.is_closing():
        transport.close()


HeldHandler = Callable[[HeldTcp], Awaitable[None]]


def serve_held(handle: HeldHandler) -> Serve:
    """A plaintext listener's connections held by a TCP-side protocol from accept on (no
    StreamReader): `handle` decides where each goes and its relay adopts the transport, with what
    arrived meanwhile (zt/proxy/tcpside.py). A transport left open when `handle` ends is closed
    (reset when it raised)."""

    async def serve(sock: socket.socket, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        held = HeldTcp()
        ticket.handed_over = True
        transport, _ = await loop.connect_accepted_socket(lambda: held, sock)
        await _closing_after(transport, handle(held))

    return serve


# -- what reaches the event loop anyway --------------------------------------------------------
def loop_exception_handler(
    metrics: AcceptMetrics | None = None,
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event loop exception handler (`loop.set_exception_handler(...)`) that counts and logs
    rate-limited (one line per kind per interval, the traceback's last frame included) instead
    of a traceback per event. For `zt run` (uvloop) and `zt hbone serve` (asyncio)."""
    counts = metrics or AcceptMetrics()

    def handle(loop: asyncio.AbstractEventLoop, context: Mapping[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled exception in the event loop")
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "message"
        counts.loop_exception(kind)
        detail = _summary(exc) if isinstance(exc, BaseException) else ""
        ratelog.warning(f"loop:{kind}:{message[:80]}", "event loop: %s %s", message, detail)

    return handle


def install_exception_handler(
    loop: asyncio.AbstractEventLoop | None = None, metrics: AcceptMetrics | None = None
) -> None:
    """Install `loop_exception_handler` on `loop` (default: the running loop)."""
    (loop or asyncio.get_running_loop()).set_exception_handler(loop_exception_handler(metrics))
