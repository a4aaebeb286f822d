"""What zt reports about each proxied connection: istio_tcp_* metrics and one access-log line.

A `ConnectionInfo` is known when the connection opens (who talks to whom); a `ConnectionOutcome` when
it closes (bytes, duration, how it ended). `ConnectionTelemetry` turns both into metrics and the
access-log record, in text (key=value, as ztunnel logs) or JSON.

Labels, response flags, byte directions and access-log fields follow ztunnel's
src/proxy/metrics.rs (CommonTrafficLabels, ConnectionResult): docs/metrics.md lists them.
Byte counters advance while a connection lives: the relay counts plain ints (HboneStream.bytes_in/
bytes_out, the splice sides' `copied`); a timer adds what moved since the last flush every
`flush_interval` seconds, and the close adds the rest, so totals are exact and the data path makes
no metrics call per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from zt.hbone.baggage import Baggage
from zt.identity.errors import PeerIdentityError, TlsError
from zt.state.model import Service, Workload
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.access")

# ztunnel's CommonTrafficLabels, in its order (the four locality labels are its flattened
# LocalityLabels). ztunnel leaves the locality labels out when it knows neither workload; a family
# here has one fixed label set, so they are always present and read "unknown" when unfilled.
TCP_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
)
SOCKET_LABELS: tuple[str, ...] = ("reporter",)  # ztunnel's SocketLabels
UNKNOWN = "unknown"  # ztunnel's DefaultedUnknown: what an unfilled label reads

# Response flags as ztunnel's ResponseFlags encodes them. How zt's endings map onto them:
#   "-"        ResponseFlags::None: the connection ran and ended (FIN or reset by an endpoint)
#   "DENY"     AuthorizationPolicyDenied ("connection denied due to policy"): a policy denied it,
#              a policy change revoked it (ztunnel: AuthorizationPolicyLateRejection), or the
#              peer's ztunnel answered 401
#   "CONNECT"  ConnectionFailure ("could not establish an upstream connection"): zt's former
#              UF (dial failed, tunnel refused), NR (loop guard, no healthy endpoint, authority
#              not this pod) and DC (the client went away during the dial, drained: ztunnel
#              records ClosedFromDrain, which it reports as ConnectionFailure)
#   "TLS_FAILURE"     TlsFailure: the HBONE TLS handshake failed
#   "IDENTITY_ERROR"  IdentityError: the peer's certificate names the wrong identity
FLAG_NONE = "-"
FLAG_DENY = "DENY"
FLAG_CONNECT = "CONNECT"
FLAG_TLS_FAILURE = "TLS_FAILURE"
FLAG_IDENTITY_ERROR = "IDENTITY_ERROR"


def failure_flag(exc: BaseException) -> str:
    """The response flag of a failed upstream set-up (ztunnel's extract_failure_reason)."""
    if isinstance(exc, PeerIdentityError):
        return FLAG_IDENTITY_ERROR
    if isinstance(exc, TlsError):
        return FLAG_TLS_FAILURE
    return FLAG_CONNECT


@dataclass(frozen=True)
class Peer:
    addr: str = ""  # ip:port
    workload: str = ""  # the instance's name (access log; "" when outside the mesh)
    namespace: str = ""
    identity: str = ""  # SPIFFE id: for a source, only one mTLS proved ("" when plaintext)
    workload_name: str = ""  # ztunnel's workload_name: the *_workload label
    canonical_name: str = ""  # *_canonical_service and *_app
    canonical_revision: str = ""  # *_canonical_revision and *_version
    cluster: str = ""
    region: str = ""
    zone: str = ""

    @classmethod
    def of(
        cls, workload: Workload | None, addr: str, identity: str = "", baggage: str | None = None
    ) -> Peer:
        """A peer at `addr`, named after the mesh workload found there; else after the `baggage`
        it sent (ztunnel's DerivedWorkload: its state is more reliable, so it wins)."""
        if workload is None:
            return cls.derived(Baggage.parse(baggage), addr, identity)
        return cls(
            addr,
            workload.name,
            workload.namespace,
            identity,
            workload.workload_name,
            workload.canonical_name,
            workload.canonical_revision,
            workload.cluster_id,
            workload.locality.region,
            workload.locality.zone,
        )

    @classmethod
    def derived(cls, names: Baggage, addr: str, identity: str = "") -> Peer:
        """A peer zt's state does not hold, named by what its `baggage` said."""
        return cls(
            addr,
            "",
            names.namespace,
            identity,
            names.workload_name,
            names.service_name,
            names.revision,
            names.cluster_id,
            names.region,
            names.zone,
        )

    @property
    def known(self) -> bool:
        """Named at all (by zt's state or by baggage)."""
        return bool(self.workload or self.workload_name or self.canonical_name)


def baggage_of(workload: Workload) -> Baggage:
    """What zt says about `workload` in `baggage` (ztunnel's Workload::baggage)."""
    return Baggage(
        cluster_id=workload.cluster_id,
        namespace=workload.namespace,
        workload_name=workload.workload_name,
        service_name=workload.canonical_name,
        revision=workload.canonical_revision,
        region=workload.locality.region,
        zone=workload.locality.zone,
    )


@dataclass(frozen=True)
class ConnectionInfo:
    direction: str  # "inbound" | "outbound"
    src: Peer
    dst: Peer  # dst.addr: the L4 address zt dialed or was dialed on (a :15008 for HBONE)
    service: str = ""  # hostname of the service reached (or guessed, inbound)
    hbone_addr: str = ""  # the HBONE authority (the CONNECT target); "" without HBONE
    protocol: str = "tcp"  # "hbone" | "tcp" | "passthrough"
    service_name: str = ""
    service_namespace: str = ""

    @property
    def reporter(self) -> str:
        """Istio's convention: the inbound side reports as destination, the outbound as source."""
        return "destination" if self.direction == "inbound" else "source"

    @property
    def mutual_tls(self) -> bool:
        return self.protocol == "hbone"


@dataclass(frozen=True)
class ConnectionOutcome:
    bytes_sent: int  # towards the connection's originator (upstream -> downstream)
    bytes_received: int  # from the connection's originator (downstream -> upstream)
    duration: float  # seconds
    response_flags: str = FLAG_NONE
    error: str = ""
    policy: str = ""


def guess_inbound_service(
    workload: Workload, port: int, services: Mapping[str, Service], for_host: str | None = None
) -> Service | None:
    """The destination workload's service the client named in `forwarded: ...;host=` (only one
    of the pod's own services: a peer's claim names nothing else), else the one whose target port
    is `port` (ztunnel's guess_inbound_service)."""
    if for_host is not None:
        for key in workload.services:
            named = services.get(key)
            if named is not None and named.hostname == for_host.lower():
                return named
    for key, ports in workload.services.items():
        if port in ports.values() and key in services:
            return services[key]
    return None


def _or_unknown(value: str) -> str:
    return value or UNKNOWN


def tcp_labels(info: ConnectionInfo, response_flags: str = FLAG_NONE) -> dict[str, str]:
    """ztunnel's CommonTrafficLabels of one connection. As there, app/version are the canonical
    name/revision, and only the destination principal is taken from the workload: the source's is
    only what mTLS proved."""
    src, dst = info.src, info.dst
    values = {
        "reporter": info.reporter,
        "source_workload": src.workload_name,
        "source_canonical_service": src.canonical_name,
        "source_canonical_revision": src.canonical_revision,
        "source_workload_namespace": src.namespace,
        "source_principal": src.identity,
        "source_app": src.canonical_name,
        "source_version": src.canonical_revision,
        "source_cluster": src.cluster,
        "destination_service": info.service,
        "destination_service_namespace": info.service_namespace,
        "destination_service_name": info.service_name,
        "destination_workload": dst.workload_name,
        "destination_canonical_service": dst.canonical_name,
        "destination_canonical_revision": dst.canonical_revision,
        "destination_workload_namespace": dst.namespace,
        "destination_principal": dst.identity,
        "destination_app": dst.canonical_name,
        "destination_version": dst.canonical_revision,
        "destination_cluster": dst.cluster,
        "request_protocol": "tcp",
        "response_flags": response_flags,
        "connection_security_policy": "mutual_tls" if info.mutual_tls else UNKNOWN,
        "source_region": src.region,
        "source_zone": src.zone,
        "destination_region": dst.region,
        "destination_zone": dst.zone,
    }
    return {k: _or_unknown(v) for k, v in values.items()}


# (sent towards the originator, received from it) so far: read from the relay's own counters
Progress = Callable[[], tuple[int, int]]


class ConnectionTelemetry:
    def __init__(
        self, registry: Registry, *, log_format: str = "text", flush_interval: float = 1.0
    ) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log format: got {log_format!r}, expected 'text' or 'json'")
        if not flush_interval > 0:
            raise ValueError(f"flush interval: got {flush_interval!r}, expected seconds > 0")
        self.log_format = log_format
        self.flush_interval = flush_interval
        self._opened = registry.counter(
            "istio_tcp_connections_opened_total",
            "The total number of TCP connections opened",
            TCP_LABELS,
        )
        self._closed = registry.counter(
            "istio_tcp_connections_closed_total",
            "The total number of TCP connections closed",
            TCP_LABELS,
        )
        self._failed = registry.counter(
            "istio_tcp_connections_failed_total",
            "The total number of TCP connections that failed to establish (unstable)",
            TCP_LABELS,
        )
        self._received = registry.counter(
            "istio_tcp_received_bytes_total",
            "The size of total bytes received during request in case of a TCP connection",
            TCP_LABELS,
        )
        self._sent = registry.counter(
            "istio_tcp_sent_bytes_total",
            "The size of total bytes sent during response in case of a TCP connection",
            TCP_LABELS,
        )
        self._sockets = registry.gauge(
            "istio_tcp_sockets_open",
            "The current number of open TCP sockets (unstable)",
            SOCKET_LABELS,
        )
        self._live: set[ConnectionReport] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._hbone_sockets: set[object] = set()

    def opened(self, info: ConnectionInfo, labels: Mapping[str, str] | None = None) -> None:
        self._opened.inc(labels=tcp_labels(info) if labels is None else labels)

    def byte_counters(
        self, labels: Mapping[str, str]
    ) -> tuple[Callable[[float], None], Callable[[float], None]]:
        """(add sent, add received) for one connection's series: looked up once, not at each
        of its flushes (27 label values each)."""
        return self._sent.bound(labels), self._received.bound(labels)

    def closed(
        self,
        info: ConnectionInfo,
        outcome: ConnectionOutcome,
        open_labels: Mapping[str, str] | None = None,
    ) -> None:
        """Count the close and log it; bytes are added by the caller (ConnectionReport)."""
        flags = outcome.response_flags
        if open_labels is None:
            labels = tcp_labels(info, flags)
        else:  # the open's labels (flags "-") with the ending's flags
            labels = {**open_labels, "response_flags": flags}
        self._closed.inc(labels=labels)
        if flags != FLAG_NONE:
            self._failed.inc(labels=labels)
        if log.isEnabledFor(logging.INFO):  # `access=off`: no formatting per connection either
            log.info(self.format(info, outcome))

    def format(
        self, info: ConnectionInfo, outcome: ConnectionOutcome, now: float | None = None
    ) -> str:
        return access_record(info, outcome, self.log_format, now)

    # -- istio_tcp_sockets_open (ztunnel: +1 at accept, -1 when the socket's handler ends) -----
    @contextlib.contextmanager
    def socket(self, reporter: str) -> Iterator[None]:
        """One accepted proxied socket, open for as long as its handler runs."""
        labels = {"reporter": reporter}
        self._sockets.inc(labels=labels)
        try:
            yield
        finally:
            self._sockets.dec(labels=labels)

    def hbone_socket(self, connection: object, closed: asyncio.Future[None]) -> None:
        """Count an inbound HBONE connection (seen at its first CONNECT) until `closed` is done."""
        if connection in self._hbone_sockets or closed.done():
            return
        self._hbone_sockets.add(connection)
        labels = {"reporter": "destination"}
        self._sockets.inc(labels=labels)

        def gone(_: asyncio.Future[None]) -> None:
            self._hbone_sockets.discard(connection)
            self._sockets.dec(labels=labels)

        closed.add_done_callback(gone)

    # -- live byte counters ----------------------------------------------------------------------
    def watch(self, report: ConnectionReport) -> None:
        self._live.add(report)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): flush() by hand
            return
        # one timer per telemetry; a timer left on a loop that has since ended is replaced
        if self._timer is None or self._timer_loop is not loop:
            self._timer_loop = loop
            self._timer = loop.call_later(self.flush_interval, self._tick)

    def unwatch(self, report: ConnectionReport) -> None:
        self._live.discard(report)

    def flush(self) -> None:
        """Add what every live connection moved since the last flush."""
        for report in list(self._live):
            report.flush()

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if self._live:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.flush_interval, self._tick)


class ConnectionReport:
    """The telemetry of one connection: `opened()` once bytes may flow, `closed()` exactly once.

    Byte counters carry the labels of the open (response_flags "-"), as ztunnel's do: it takes
    its byte counters when the connection opens, before any ending is known."""

    def __init__(
        self,
        telemetry: ConnectionTelemetry,
        info: ConnectionInfo,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.telemetry = telemetry
        self.info = info
        self.clock = clock
        self.started = clock()
        self.labels = tcp_labels(info)
        self.was_opened = False
        self.was_closed = False
        self._progress: Progress | None = None
        self._flushed = (0, 0)
        self._counters: tuple[Callable[[float], None], Callable[[float], None]] | None = None

    def answered(self, baggage: str | None) -> None:
        """The upstream's CONNECT 200 named its workload: a destination zt's state does not know
        is labelled with those names (ztunnel's with_derived_destination). Only before the open:
        labels are fixed there."""
        if self.was_opened or baggage is None or self.info.dst.known:
            return
        names = Baggage.parse(baggage)
        if names:
            dst = Peer.derived(names, self.info.dst.addr, self.info.dst.identity)
            self.info = dataclasses.replace(self.info, dst=dst)
            self.labels = tcp_labels(self.info)

    def opened(self, progress: Progress | None = None) -> None:
        """Count the open; with `progress`, bytes are flushed while the connection lives."""
        self.was_opened = True
        self.telemetry.opened(self.info, self.labels)
        if progress is not None:
            self._progress = progress
            self.telemetry.watch(self)

    @contextlib.contextmanager
    def relaying(self, progress: Progress) -> Iterator[None]:
        """Open around a relay. A relay that does not return is closed here with what it moved:
        cancelled (zt drains or stops) as ztunnel records a dropped connection (ClosedFromDrain,
        a CONNECT failure), and a relay that raised likewise, its error named."""
        self.opened(progress)
        try:
            yield
        except BaseException as exc:
            if not self.was_closed:
                sent, received = progress()
                drained = isinstance(exc, asyncio.CancelledError)
                error = "closed from drain" if drained else f"relay failed: {exc!r}"
                self.closed(sent, received, FLAG_CONNECT, error)
            raise

    def flush(self) -> None:
        if self._progress is not None:
            self._add(*self._progress())

    def _add(self, sent: int, received: int) -> None:
        old_sent, old_received = self._flushed
        sent, received = max(sent, old_sent), max(received, old_received)
        if sent == old_sent and received == old_received:
            return  # an idle connection costs a comparison per flush
        if self._counters is None:
            self._counters = self.telemetry.byte_counters(self.labels)
        add_sent, add_received = self._counters
        if sent > old_sent:
            add_sent(sent - old_sent)
        if received > old_received:
            add_received(received - old_received)
        self._flushed = (sent, received)

    def closed(
        self,
        sent: int = 0,
        received: int = 0,
        flags: str = FLAG_NONE,
        error: str = "",
        policy: str = "",
    ) -> None:
        """`sent`: bytes towards the originator, `received`: from it, in total."""
        if self.was_closed:
            return
        self.was_closed = True
        if not self.was_opened:
            # Refused before it opened: ztunnel counts every attempt as opened (at "-").
            self.telemetry.opened(self.info, self.labels)
        self.telemetry.unwatch(self)
        self._add(sent, received)
        elapsed = self.clock() - self.started
        outcome = ConnectionOutcome(sent, received, elapsed, flags, error, policy)
        self.telemetry.closed(self.info, outcome, self.labels)


def access_record(
    info: ConnectionInfo, outcome: ConnectionOutcome, fmt: str = "text", now: float | None = None
) -> str:
    """One access-log line: ztunnel's fields, in its order, then zt's (protocol, response_flags,
    policy, error). Empty values are left out, as ztunnel's tracing leaves out None. Text is
    `key=value` pairs (quoted when needed), JSON one object."""
    src, dst, mtls = info.src, info.dst, info.mutual_tls
    # ztunnel logs bytes from its own side of the mesh ("Istio flips the metric for source [...]
    # Unflip for logs"): outbound, it sent what the originator sent; inbound, what it answered.
    if info.reporter == "source":
        sent, received = outcome.bytes_received, outcome.bytes_sent
    else:
        sent, received = outcome.bytes_sent, outcome.bytes_received
    fields: dict[str, object] = {
        "ts": _timestamp(time.time() if now is None else now),
        "src.addr": src.addr,
        "src.workload": src.workload or src.canonical_name,
        "src.namespace": src.namespace,
        "src.identity": src.identity if mtls else "",
        "src.cluster": src.cluster,
        "dst.addr": dst.addr,
        "dst.hbone_addr": info.hbone_addr,
        "dst.service": info.service,
        "dst.workload": dst.workload or dst.canonical_name,
        "dst.namespace": dst.namespace,
        "dst.identity": dst.identity if mtls else "",
        "dst.cluster": dst.cluster,
        "direction": info.direction,
        "bytes_sent": sent,
        "bytes_recv": received,
        "duration": f"{int(outcome.duration * 1000)}ms",
        "protocol": info.protocol,
        "response_flags": outcome.response_flags,
        "policy": outcome.policy,
        "error": outcome.error,
    }
    fields = {k: v for k, v in fields.items() if v != ""}
    if fmt == "json":
        return json.dumps({"msg": "connection complete", **fields}, separators=(",", ":"))
    return "connection complete " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())


def _text(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\\n'):
        return json.dumps(text)
    return text


def _timestamp(t: float) -> str:
    ms = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"
