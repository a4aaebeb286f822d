"""What every pod proxy of a node shares: the snapshot, certificates, capture, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from zt.capture import Capture
from zt.config import SnapshotStore
from zt.errors import ZtError
from zt.identity.manager import CertificateManager
from zt.node.conntrack import ConnTracker
from zt.node.dns import NodeDns
from zt.proxy.accept import DEFAULT_LIMITS, AcceptLimits, AcceptMetrics
from zt.state.loopguard import DEFAULT_ILLEGAL_PORTS
from zt.state.loopguard import METRIC as LOOP_GUARD_METRIC
from zt.state.loopguard import METRIC_HELP as LOOP_GUARD_HELP
from zt.telemetry.connections import FLAG_CONNECT, FLAG_DENY, FLAG_NONE, ConnectionTelemetry
from zt.telemetry.logsetup import dropped_total
from zt.telemetry.metrics import Counter, Registry

log = logging.getLogger("zt.node")

RENEW_CHECK = 60.0  # seconds between certificate renewal checks (renewal is at half-life)
RENEW_MIN_WAIT = 0.5  # never spin: a renewal that fails backs off in the manager anyway

# How a connection ended, in ztunnel's response flags (zt/telemetry/connections.py maps them).
FLAG_OK = FLAG_NONE
FLAG_DENIED = FLAG_DENY  # authorization policy
FLAG_REVOKED = FLAG_DENY  # a policy change revoked it (ztunnel: a late policy rejection)
FLAG_UPSTREAM_FAILURE = FLAG_CONNECT  # could not reach the upstream / tunnel refused
FLAG_NO_ROUTE = FLAG_CONNECT  # no route (loop guard, no healthy endpoint, unknown source)
FLAG_DRAINED = FLAG_CONNECT  # the client went away during the dial

STATUS_FLAGS = {400: FLAG_NO_ROUTE, 401: FLAG_DENIED, 503: FLAG_UPSTREAM_FAILURE}


@dataclass
class NodeServices:
    node: str
    store: SnapshotStore
    certs: CertificateManager
    capture: Capture
    registry: Registry
    telemetry: ConnectionTelemetry
    tracker: ConnTracker = field(default_factory=ConnTracker)
    dial_timeout: float = 10.0
    socks5: bool = False  # docs/design.md §1: optional, off by default
    # Ports zt never delivers to or dials locally (zt/state/loopguard.py): the defaults plus the
    # node's configured metrics/readiness/admin ports.
    illegal_ports: frozenset[int] = DEFAULT_ILLEGAL_PORTS
    # Worker processes (zt/node/workers.py): which one this is (0 = the leader), whether its
    # listeners join SO_REUSEPORT groups (workers > 1), and whether it enrolls pods in capture
    # (only the leader's sockets go into the sockmap; the kernel spreads over the group).
    worker: int = 0
    reuse_port: bool = False
    enrolls: bool = True
    # each pod's DNS proxy (zt/node/dns.py): None with --no-dns and in follower workers
    dns: NodeDns | None = None
    # deliver to apps from the caller's IP (zt/capture/origsrc.py); --no-original-source: from
    # the pod's own IP
    original_source: bool = False
    _accepted: Counter | None = field(default=None, init=False, repr=False)
    # Caps, deadlines and keepalive of every pod's accept loops (zt/proxy/accept.py).
    accept_limits: AcceptLimits = DEFAULT_LIMITS
    _accept_metrics: AcceptMetrics | None = field(default=None, init=False, repr=False)

    def accept_metrics(self) -> AcceptMetrics:
        """The accept loops' counters (refusals, open connections, handshake timeouts, handler
        errors), exported through `registry` labelled by pod; one set for the whole node."""
        if self._accept_metrics is None:
            self._accept_metrics = AcceptMetrics(self.registry)
        return self._accept_metrics

    def count_connection(self, listener: str) -> None:
        """One connection accepted by this worker on a pod's `listener` (outbound, inbound,
        hbone, socks5): per-worker counts prove the kernel spreads connections over workers."""
        if self._accepted is None:
            self._accepted = self.registry.counter(
                "zt_worker_connections_total",
                "Connections accepted, by worker process and listener",
                ("worker", "listener"),
            )
        self._accepted.inc(labels={"worker": str(self.worker), "listener": listener})

    def add_worker_collectors(self) -> None:
        """The families every worker process reports and /metrics sums over them (the shared
        multiprocess files of zt/telemetry/metrics.py): revoked and live connections, dropped log
        records."""

        def collect() -> list[tuple[str, str, str, float]]:
            return [
                ("zt_policy_revoked_connections_total", "Live connections closed by a policy "
                 "change", "counter", float(self.tracker.revoked_total)),
                ("zt_live_inbound_connections", "Inbound connections open", "gauge",
                 float(self.tracker.count())),
                ("zt_log_dropped_total", "Log records dropped because stderr did not keep up "
                 "(logging never blocks the data path)", "counter", float(dropped_total())),
            ]  # fmt: skip

        self.registry.add_collector(collect)

    def count_loop_guard(self, pod: str, path: str, detail: str) -> None:
        """One refusal by the loop guard on `path` (plaintext, hbone, outbound, socks5). The
        access record says which destination; the debug line follows one pod's refusals."""
        counter = self.registry.counter(LOOP_GUARD_METRIC, LOOP_GUARD_HELP, ("path",))
        counter.inc(labels={"path": path})
        log.debug("pod %s: %s connection refused: %s", pod, path, detail)

    def count_hbone_limit(self, limit: str) -> None:
        """An HBONE peer went past `limit` (a zt/hbone/limits.py name) on one of the node's
        :15008 listeners (HboneServer's `on_limit`)."""
        self.registry.counter(
            "zt_hbone_limit_exceeded_total",
            "HTTP/2 limits HBONE peers went past (the connection or stream was refused)",
            ("limit",),
        ).inc(labels={"limit": limit})


async def renew_loop(certs: CertificateManager, who: str) -> None:
    """Every worker renews its own workload certificates (each issues its own from the CA), at
    half-life: it wakes when the next one is due, and at least every RENEW_CHECK seconds (a leaf of
    a few seconds, as a test's rotation uses, must not outlive the tick), and whenever a new
    certificate is cached (its half-life may come before the one it slept for)."""
    while True:
        certs.cache_changed.clear()  # before reading the due time: a change after it wakes us
        due = certs.next_renewal()
        wait = RENEW_CHECK if due is None else due - certs.clock()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                certs.cache_changed.wait(), min(RENEW_CHECK, max(RENEW_MIN_WAIT, wait))
            )
        with contextlib.suppress(ZtError):  # the manager logs and keeps the valid old cert
            renewed = await certs.renew_due()
            if renewed:
                log.info("%s renewed %d workload certificate(s)", who, renewed)
