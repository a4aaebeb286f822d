"""What every pod proxy of a node shares: the snapshot, certificates, capture, telemetry."""

from __future__ import annotations

from dataclasses import dataclass, field

from zt.capture import Capture
from zt.config import SnapshotStore
from zt.identity.manager import CertificateManager
from zt.node.conntrack import ConnTracker
from zt.telemetry.connections import ConnectionTelemetry
from zt.telemetry.metrics import Registry

# How a connection that never carried bytes ended, as Envoy/Istio response flags name it.
FLAG_OK = "-"
FLAG_DENIED = "DENY"  # authorization policy
FLAG_UPSTREAM_FAILURE = "UF"  # could not reach the upstream / tunnel refused
FLAG_NO_ROUTE = "NR"  # no route (loop guard, no healthy endpoint, unknown source)
FLAG_DRAINED = "DC"  # closed by zt (drain, pod removal, revoked by a policy change)

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
    socks5: bool = False  # DESIGN.md §1: optional, off by default
