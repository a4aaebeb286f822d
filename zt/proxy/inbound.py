"""The inbound flow: a CONNECT (HBONE) or a plaintext connection → `admit` → dial → relay.

One flow for every caller: the node (a pod's :15008 and :15006), `zt hbone serve`, the tests and
the bench. What differs is injected: the decision (`admit`, pure: loop guard, authority, policy),
the socket maker (inside the pod's netns, or the host's), the observer (telemetry) and `track`
(the node's live connections, so that a policy change can revoke them).

docs/design.md §2: Responses: 200 once policy passed **and** the upstream socket is connected; 400
malformed request [...]; 401 policy denied; 503 unknown destination or upstream unreachable (10 s
dial timeout). After 200, failures become RST_STREAM. Malformed requests are answered by the core.

A CONNECT may name a service hostname instead of an address (`:authority name:port`, as ztunnel
accepts): `admit` resolves it and says where to dial (`Admission.target`); a name nobody resolved
is a 503, as ztunnel answers a hostname it does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from zt.addr import Destination, IpAddress, SocketAddr, from_sockaddr, unmap
from zt.errors import ZtError
from zt.hbone.errors import UpstreamUnreachable
from zt.hbone.request import ConnectRequest
from zt.identity.spiffe import SpiffeId
from zt.proxy.client import DIAL_TIMEOUT
from zt.proxy.errors import InternalError, StreamResetError
from zt.proxy.flow import (
    DENIED,
    DRAINED,
    OK,
    UNOBSERVED,
    UPSTREAM_FAILURE,
    Connector,
    Observer,
    Outcome,
    Report,
    connect_direct,
)
from zt.proxy.relay import TcpRelay, reset_tcp_transport
from zt.proxy.splice import Splice
from zt.proxy.stream import HboneStream
from zt.proxy.tcpside import TcpSource, transport_of
from zt.state.authz import Connection
from zt.state.hostnames import UnknownHostname
from zt.telemetry.ratelog import RateLimitedLogger

log = logging.getLogger("zt.proxy.inbound")
# Each refused client is one line naming its address and the reason; keyed by reason and client
# IP, so a client repeating the same refused request costs one line per interval (with a count).
refusal_log = RateLimitedLogger(log)


@dataclass(frozen=True)
class Arrival:
    """A connection as it reached zt's inbound side."""

    source: SocketAddr | None  # the client's address (an HBONE peer node, a plaintext client)
    # where it goes: the CONNECT authority (an address, or a service hostname `admit` resolves),
    # or the plaintext destination (always an address)
    target: Destination
    local: SocketAddr | None  # where it reached zt (a pod's :15008 for HBONE)
    identity: SpiffeId | None  # the HBONE peer's proven identity; None for plaintext
    request: ConnectRequest | None = None  # the CONNECT with its context headers (HBONE)

    @property
    def hbone(self) -> bool:
        return self.identity is not None


@dataclass(frozen=True)
class Admission:
    """`admit`'s answer. A refusal carries its typed error (its class holds the CONNECT status)
    and the flag it is recorded with; `connection` is what a policy change re-checks later."""

    allowed: bool
    error: ZtError | None = None
    flags: str = OK
    policy: str = ""
    connection: Connection | None = None
    logged: bool = False  # `admit` logged the refusal itself: the flow adds no line of its own
    # where to dial when it is not the arrival's target: a hostname authority `admit` resolved
    target: SocketAddr | None = None
    # written to the upstream before any relayed byte: the PROXY v2 header of a workload whose
    # applicationTunnel asks for it (zt/proxy/proxyv2.py), after the 200 as ztunnel writes it
    preamble: bytes = b""

    @classmethod
    def allow(
        cls,
        policy: str = "",
        connection: Connection | None = None,
        target: SocketAddr | None = None,
        preamble: bytes = b"",
    ) -> Admission:
        return cls(True, policy=policy, connection=connection, target=target, preamble=preamble)

    @classmethod
    def deny(cls, error: ZtError, flags: str = DENIED, policy: str = "") -> Admission:
        """Deny with the status and reason the error class carries (e.g. PolicyDenied → 401)."""
        return cls(False, error, flags, policy)


Admit = Callable[[Arrival], Admission]
# Delivery from the client's own IP (ztunnel's original source; zt/node/podnet.py connect_from):
# (client ip, target, timeout) -> the connected socket.
ConnectFrom = Callable[[IpAddress, SocketAddr, float], Awaitable[socket.socket]]
# Registers a live connection with its revoke(reason) callback; returns the function that
# forgets it (the node's conntrack: a policy change re-checks `Admission.connection`).
Track = Callable[[Admission, Callable[[str], None]], Callable[[], None]]


def allow_all(arrival: Arrival) -> Admission:
    return Admission.allow()


def _unobserved(arrival: Arrival) -> Observer:
    return UNOBSERVED


def _untracked(admission: Admission, revoke: Callable[[str], None]) -> Callable[[], None]:
    return lambda: None


def _no_baggage() -> str | None:
    return None


def _ending(outcome: str) -> str:
    return "" if outcome == "closed" else outcome


class _Revocation:
    """Set when a policy change revoked the live connection (its relay was reset for it)."""

    def __init__(self, reset: Callable[[], None]) -> None:
        self.reason: str | None = None
        self._reset = reset

    def __call__(self, reason: str) -> None:
        self.reason = reason
        self._reset()

    def outcome(self, relayed: str, policy: str, to_client: int, from_client: int) -> Outcome:
        if self.reason is not None:
            error = f"revoked by policy change: {self.reason}"
            return Outcome(DENIED, error, policy, to_client, from_client)
        return Outcome(OK, _ending(relayed), policy, to_client, from_client)


class InboundFlow:
    """Serves CONNECTs (`tunnel`) and plaintext connections (`plaintext`). `statuses` counts the
    CONNECT answers given, `tunnels` the 200s."""

    def __init__(
        self,
        admit: Admit = allow_all,
        *,
        connect: Connector = connect_direct,
        dial_timeout: float = DIAL_TIMEOUT,
        observe: Callable[[Arrival], Observer] = _unobserved,
        track: Track = _untracked,
        baggage: Callable[[], str | None] = _no_baggage,
        connect_from: ConnectFrom | None = None,
    ) -> None:
        """`baggage`: the served workload's names for each 200 (zt/hbone/baggage.py)."""
        self.admit = admit
        self.baggage = baggage
        self.connect = connect
        self.connect_from = connect_from  # None: every delivery comes from `connect`'s address
        self.dial_timeout = dial_timeout
        self.observe = observe
        self.track = track
        self.statuses: Counter[int] = Counter()
        self.tunnels = 0

    # -- HBONE ---------------------------------------------------------------------------------
    async def tunnel(self, stream: HboneStream) -> Outcome:
        """One CONNECT: admit, dial, answer 200 once the upstream socket is connected, relay.
        A failure before the answer becomes its status; after the 200 it becomes RST_STREAM."""
        arrival = _arrival(stream)
        report = Report(self.observe(arrival))
        return await report.around(self._tunnel(stream, arrival, report))

    async def _tunnel(self, stream: HboneStream, arrival: Arrival, report: Report) -> Outcome:
        admission = self._admit(arrival)
        if not admission.allowed:
            assert admission.error is not None
            self._refuse(stream, arrival, admission.error, logged=admission.logged)
            return Outcome(admission.flags, str(admission.error), admission.policy)
        target = _upstream(arrival, admission)
        if not isinstance(target, SocketAddr):
            self._refuse(stream, arrival, target)
            return Outcome(UPSTREAM_FAILURE, str(target), admission.policy)
        try:
            tcp = await self._dial(arrival, target)
        except Exception as exc:
            error = _dial_error(target, exc)
            self._refuse(stream, arrival, error)
            return Outcome(UPSTREAM_FAILURE, str(error), admission.policy)
        except asyncio.CancelledError:  # the client reset the stream before our answer
            report.ended(Outcome(DRAINED, "client reset the stream during the dial"))
            raise
        driver = stream.driver
        corked = driver.cork()  # the 200 and what the target already sent: one TLS record
        try:
            # only now: the upstream socket is connected
            self._respond(stream, 200, baggage=self.baggage())
        except (StreamResetError, ZtError):  # the client gave up while we dialed
            if tcp.transport is not None:
                tcp.transport.close()
            return Outcome(DRAINED, "client went away during the dial", admission.policy)
        else:
            self.tunnels += 1
            if admission.preamble and tcp.transport is not None:
                tcp.transport.write(admission.preamble)  # ahead of every relayed byte
            tcp.begin(stream)
        finally:
            if corked:
                driver.uncork()
        return await self._relayed(tcp, stream, admission, report)

    async def _relayed(
        self, tcp: TcpRelay, stream: HboneStream, admission: Admission, report: Report
    ) -> Outcome:
        revocation = _Revocation(tcp.reset)  # RST_STREAM(CONNECT_ERROR) and a TCP RST
        forget = self.track(admission, revocation)
        # originator = the HBONE peer: towards it is what the stream carried, from it what it
        # delivered to the app
        report.opened(lambda: (stream.bytes_out, stream.bytes_in))
        try:
            relayed = await asyncio.shield(tcp.done)
        except asyncio.CancelledError:  # zt stops or drains: neither side saw a whole stream
            tcp.cancel()
            raise
        finally:
            forget()
        return revocation.outcome(relayed, admission.policy, stream.bytes_out, stream.bytes_in)

    def _deliver(self, arrival: Arrival, target: SocketAddr) -> Awaitable[socket.socket]:
        """Connect to the target: from the client's IP when original source is on, except to a
        loopback target (a PROXY application tunnel), which is reached from loopback: "we must
        bind the src to be localhost when sending to localhost" (ztunnel's inbound)."""
        if (
            self.connect_from is not None
            and arrival.source is not None
            and not target.ip.is_loopback
        ):
            return self.connect_from(arrival.source.ip, target, self.dial_timeout)
        return self.connect(target, self.dial_timeout)

    async def _dial(self, arrival: Arrival, target: SocketAddr) -> TcpRelay:
        """The upstream as a transport whose protocol is the relay's TCP side (no StreamReader in
        between); it keeps what the target sends before the 200."""
        async with asyncio.timeout(self.dial_timeout):
            sock = await self._deliver(arrival, target)
        tcp = TcpRelay()
        try:
            await asyncio.get_running_loop().create_connection(lambda: tcp, sock=sock)
        except BaseException:
            sock.close()
            raise
        return tcp

    def _admit(self, arrival: Arrival) -> Admission:
        try:
            return self.admit(arrival)
        except ZtError as exc:
            return Admission.deny(exc, UPSTREAM_FAILURE)
        except Exception as exc:  # the decision of another room failed: answer, don't hang
            log.exception("admission of %s failed", arrival.target)
            return Admission.deny(InternalError(repr(exc)), UPSTREAM_FAILURE)

    def _refuse(
        self, stream: HboneStream, arrival: Arrival, error: ZtError, *, logged: bool = False
    ) -> None:
        source = str(arrival.source) if arrival.source is not None else "?"
        if not logged:
            self._log_refusal(arrival, source, error)
        if stream.was_reset is None and not stream.driver.closed.done():
            with contextlib.suppress(StreamResetError, ZtError):  # the client gave up already
                self._respond(stream, error.http_status, error.reason)

    @staticmethod
    def _log_refusal(arrival: Arrival, source: str, error: ZtError) -> None:
        refusal_log.info(
            f"connect:{error.reason}:{source.rpartition(':')[0]}",
            "CONNECT %s from %s (%s) refused: %d %s: %s",
            arrival.target, source, arrival.identity, error.http_status, error.reason, error,
        )  # fmt: skip

    def _respond(
        self, stream: HboneStream, status: int, reason: str = "", baggage: str | None = None
    ) -> None:
        stream.driver.respond(stream, status, reason, baggage)
        self.statuses[status] += 1

    # -- plaintext -----------------------------------------------------------------------------
    async def plaintext(self, client: TcpSource, arrival: Arrival) -> Outcome:
        """A non-HBONE connection to `arrival.target`: admit (a deny resets it), dial, splice."""
        report = Report(self.observe(arrival))
        return await report.around(self._plaintext(client, arrival, report), lambda: _reset(client))

    async def _plaintext(self, client: TcpSource, arrival: Arrival, report: Report) -> Outcome:
        admission = self._admit(arrival)
        if not admission.allowed:
            assert admission.error is not None
            _reset(client)
            return Outcome(admission.flags, str(admission.error), admission.policy)
        target = _upstream(arrival, admission)
        if not isinstance(target, SocketAddr):
            _reset(client)
            return Outcome(UPSTREAM_FAILURE, str(target), admission.policy)
        try:
            async with asyncio.timeout(self.dial_timeout):
                upstream = await self._deliver(arrival, target)
        except Exception as exc:
            _reset(client)
            return Outcome(UPSTREAM_FAILURE, str(_dial_error(target, exc)), admission.policy)
        spliced = Splice()
        revocation = _Revocation(spliced.reset)
        forget = self.track(admission, revocation)
        report.opened(spliced.progress)
        try:
            result = await spliced.run(client, upstream)  # cancelled: it resets both sides
        finally:
            forget()
        to_client, from_client = spliced.progress()
        return revocation.outcome(result.outcome, admission.policy, to_client, from_client)


def _upstream(arrival: Arrival, admission: Admission) -> SocketAddr | ZtError:
    """Where an admitted connection is dialed: what `admit` resolved, else the arrival's address;
    a hostname nobody resolved (an `admit` without a mesh) is an error, never a dial."""
    if admission.target is not None:
        return admission.target
    if isinstance(arrival.target, SocketAddr):
        return arrival.target
    return UnknownHostname(f"{arrival.target}: no mesh here resolves hostname authorities")


def _dial_error(target: SocketAddr, exc: Exception) -> ZtError:
    """The typed failure of a dial: unreachable (503), the connector's own ZtError (its status),
    or a bug in another room's connector (500)."""
    if isinstance(exc, ZtError):
        return exc
    if isinstance(exc, OSError | TimeoutError):
        return UpstreamUnreachable(f"{target}: {exc}")
    log.error("connector failed for %s: %r", target, exc)
    return InternalError(repr(exc))


def _arrival(stream: HboneStream) -> Arrival:
    transport = stream.driver.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    local = transport.get_extra_info("sockname") if transport is not None else None
    authority = stream.request.authority
    if isinstance(authority, SocketAddr):
        authority = SocketAddr(unmap(authority.ip), authority.port)
    return Arrival(
        source=from_sockaddr(peer) if isinstance(peer, tuple) else None,
        target=authority,
        local=from_sockaddr(local) if isinstance(local, tuple) else None,
        identity=stream.driver.peer,
        request=stream.request,
    )


def _reset(client: TcpSource) -> None:
    transport = transport_of(client)
    if transport is not None:
        reset_tcp_transport(transport)
