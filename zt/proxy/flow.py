"""What zt's two data flows share: the record of how a connection ended, the observer a caller
plugs in, and the socket maker.

zt carries a TCP connection one of two ways, whoever runs it (the node for its pods,
`zt hbone serve|connect`, the tests, the bench):
- outbound (zt/proxy/outbound.py): an app's connection, its destination, `route` (pure) →
  a pooled HBONE tunnel, a plain TCP connection, or a refusal;
- inbound (zt/proxy/inbound.py): a CONNECT or a plaintext connection, `admit` (pure) → a dial
  with the caller's socket maker → the relay.
Each flow returns one `Outcome` and tells its `Observer` once; the caller decides what to record.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from zt.addr import SocketAddr
from zt.proxy.accept import wait_writable
from zt.sockopt import set_keepalive
from zt.telemetry.connections import (
    FLAG_CONNECT,
    FLAG_DENY,
    FLAG_IDENTITY_ERROR,
    FLAG_NONE,
    FLAG_TLS_FAILURE,
)

# How a connection ended, in ztunnel's response flags (its access log and metrics use them).
OK = FLAG_NONE  # relayed until one side closed or reset
DENIED = FLAG_DENY  # refused by authorization policy, or revoked later by a policy change
NO_ROUTE = FLAG_CONNECT  # loop guard, authority not served here, no endpoint, source unknown
UPSTREAM_FAILURE = FLAG_CONNECT  # the dial failed or the tunnel was refused
DRAINED = FLAG_CONNECT  # the client went away during set-up, or zt stopped the relay
TLS_FAILURE = FLAG_TLS_FAILURE  # the HBONE peer's TLS handshake failed
IDENTITY_ERROR = FLAG_IDENTITY_ERROR  # the HBONE peer is not who the route expects
# A refused tunnel's status, as the flag the originating side records.
STATUS_FLAGS = {400: NO_ROUTE, 401: DENIED, 503: UPSTREAM_FAILURE}


@dataclass(frozen=True)
class Outcome:
    """One connection's end: its flag, why (empty when it closed normally), the deciding
    policy, and the bytes moved towards the originator (`to_client`) and from it."""

    flags: str = OK
    error: str = ""
    policy: str = ""
    to_client: int = 0
    from_client: int = 0


# (to_client, from_client) so far: read while the relay runs (live byte counters).
Progress = Callable[[], tuple[int, int]]


class Observer(Protocol):
    """What the caller learns of one connection: who answered upstream (an HBONE 200's
    `baggage`), when bytes may start to flow, and its end."""

    def answered(self, baggage: str | None) -> None: ...

    def opened(self, progress: Progress) -> None: ...

    def ended(self, outcome: Outcome) -> None: ...


class Unobserved:
    """The observer of a caller that records nothing (`zt hbone serve|connect`, tests)."""

    def answered(self, baggage: str | None) -> None:
        pass

    def opened(self, progress: Progress) -> None:
        pass

    def ended(self, outcome: Outcome) -> None:
        pass


UNOBSERVED = Unobserved()


class Report:
    """A flow's hold on its observer: `ended` reaches it exactly once, and a flow that raises
    (zt stops or drains: cancelled; a bug: any other exception) still ends it with the bytes
    moved so far, as ztunnel records a dropped connection (a CONNECT failure)."""

    __slots__ = ("_progress", "ended_once", "observer")

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.ended_once = False
        self._progress: Progress | None = None

    def answered(self, baggage: str | None) -> None:
        """The upstream's 200 carried `baggage` (its workload's names): before `opened`."""
        self.observer.answered(baggage)

    def opened(self, progress: Progress) -> None:
        self._progress = progress
        self.observer.opened(progress)

    def ended(self, outcome: Outcome) -> None:
        if not self.ended_once:
            self.ended_once = True
            self.observer.ended(outcome)

    async def around(
        self, flow: Awaitable[Outcome], undo: Callable[[], None] | None = None
    ) -> Outcome:
        """Await one connection's flow and tell the observer how it ended; if it raises, `undo`
        (e.g. reset the client) runs first and the observer hears of the failure."""
        try:
            outcome = await flow
        except BaseException as exc:
            if undo is not None:
                undo()
            self.failed(exc)
            raise
        self.ended(outcome)
        return outcome

    def failed(self, exc: BaseException) -> None:
        to_client, from_client = self._progress() if self._progress is not None else (0, 0)
        drained = isinstance(exc, asyncio.CancelledError)
        error = "closed from drain" if drained else f"relay failed: {exc!r}"
        self.ended(Outcome(DRAINED, error, "", to_client, from_client))


# A connected, non-blocking TCP socket to `target` within `timeout` seconds (raises OSError or
# TimeoutError). The node makes it inside the pod's netns, marked so capture leaves it alone.
Connector = Callable[[SocketAddr, float], Awaitable[socket.socket]]


async def connect_direct(target: SocketAddr, timeout: float) -> socket.socket:
    """The host's own connector (`zt hbone serve|connect`): a non-blocking `connect()` and one
    wait for writability (per-tunnel cost, docs/PERFORMANCE.md), instead of `loop.sock_connect`,
    which also resolves the address it is given (~20 µs a dial here)."""
    sock = socket.socket(socket.AF_INET6 if target.ip.version == 6 else socket.AF_INET)
    sock.setblocking(False)
    try:
        set_keepalive(sock)  # a vanished upstream must not hold the tunnel for hours
        err = sock.connect_ex((str(target.ip), target.port))
        if err == errno.EINPROGRESS:
            async with asyncio.timeout(timeout):
                await wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock
