"""What zt reports about each proxied connection: istio_tcp_* metrics and one access-log line.

A `ConnectionInfo` is known when the connection opens (who talks to whom); a `ConnectionOutcome` when
it closes (bytes, duration, how it ended). `ConnectionTelemetry` turns both into metrics and the
access-log record, in text (key=value, as ztunnel logs) or JSON.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

from zt.telemetry.metrics import TCP_LABELS, Registry

log = logging.getLogger("zt.access")


@dataclass(frozen=True)
class Peer:
    addr: str = ""  # ip:port
    workload: str = ""  # workload name ("" when outside the mesh)
    namespace: str = ""
    identity: str = ""  # SPIFFE id ("" when plaintext / unknown)


@dataclass(frozen=True)
class ConnectionInfo:
    direction: str  # "inbound" | "outbound"
    src: Peer
    dst: Peer
    service: str = ""  # hostname of the service when reached through a VIP
    hbone_addr: str = ""  # the :15008 next hop / the HBONE listener
    protocol: str = "tcp"  # "hbone" | "tcp" | "passthrough"

    @property
    def reporter(self) -> str:
        """Istio's convention: the inbound side reports as destination, the outbound as source."""
        return "destination" if self.direction == "inbound" else "source"


@dataclass(frozen=True)
class ConnectionOutcome:
    bytes_sent: int  # towards the connection's originator
    bytes_received: int  # from the connection's originator
    duration: float  # seconds
    response_flags: str = "-"  # "-" ok; "DENY" policy; "UF" upstream failure; "DC" drained ...
    error: str = ""
    policy: str = ""


def _labels(info: ConnectionInfo, response_flags: str) -> dict[str, str]:
    values = {
        "reporter": info.reporter,
        "source_workload": info.src.workload or "unknown",
        "source_workload_namespace": info.src.namespace or "unknown",
        "source_principal": info.src.identity or "unknown",
        "destination_workload": info.dst.workload or "unknown",
        "destination_workload_namespace": info.dst.namespace or "unknown",
        "destination_principal": info.dst.identity or "unknown",
        "destination_service": info.service or "unknown",
        "request_protocol": "tcp",
        "response_flags": response_flags,
        "connection_security_policy": "mutual_tls" if info.protocol == "hbone" else "unknown",
    }
    return values


class ConnectionTelemetry:
    def __init__(self, registry: Registry, *, log_format: str = "text") -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log format: got {log_format!r}, expected 'text' or 'json'")
        self.log_format = log_format
        self._opened = registry.counter(
            "istio_tcp_connections_opened_total", "TCP connections opened", TCP_LABELS
        )
        self._closed = registry.counter(
            "istio_tcp_connections_closed_total", "TCP connections closed", TCP_LABELS
        )
        self._received = registry.counter(
            "istio_tcp_received_bytes_total", "Bytes received from the originator", TCP_LABELS
        )
        self._sent = registry.counter(
            "istio_tcp_sent_bytes_total", "Bytes sent to the originator", TCP_LABELS
        )

    def opened(self, info: ConnectionInfo) -> None:
        self._opened.inc(labels=_labels(info, "-"))

    def closed(self, info: ConnectionInfo, outcome: ConnectionOutcome) -> None:
        labels = _labels(info, outcome.response_flags)
        if outcome.response_flags != "-":
            # A connection refused before it opened (policy, no upstream) still counts as opened
            # and closed, as Istio reports it, with its response flag.
            self._opened.inc(labels=labels)
        self._closed.inc(labels=labels)
        self._received.inc(outcome.bytes_received, labels)
        self._sent.inc(outcome.bytes_sent, labels)
        log.info(self.format(info, outcome))

    def format(
        self, info: ConnectionInfo, outcome: ConnectionOutcome, now: float | None = None
    ) -> str:
        return access_record(info, outcome, self.log_format, now)


class ConnectionReport:
    """The telemetry of one connection: `opened()` once bytes may flow, `closed()` exactly once."""

    def __init__(self, telemetry: ConnectionTelemetry, info: ConnectionInfo) -> None:
        self.telemetry = telemetry
        self.info = info
        self.started = time.monotonic()

    def opened(self) -> None:
        self.telemetry.opened(self.info)

    def closed(
        self, sent: int = 0, received: int = 0, flags: str = "-", error: str = "", policy: str = ""
    ) -> None:
        elapsed = time.monotonic() - self.started
        outcome = ConnectionOutcome(sent, received, elapsed, flags, error, policy)
        self.telemetry.closed(self.info, outcome)


def access_record(
    info: ConnectionInfo, outcome: ConnectionOutcome, fmt: str = "text", now: float | None = None
) -> str:
    """One access-log line. Text is `key=value` pairs (quoted when needed), JSON one object."""
    fields: dict[str, object] = {
        "ts": _timestamp(time.time() if now is None else now),
        "direction": info.direction,
        "protocol": info.protocol,
        **{f"src.{k}": v for k, v in asdict(info.src).items() if v},
        **{f"dst.{k}": v for k, v in asdict(info.dst).items() if v},
        "dst.service": info.service,
        "dst.hbone_addr": info.hbone_addr,
        "bytes_sent": outcome.bytes_sent,
        "bytes_recv": outcome.bytes_received,
        "duration_ms": round(outcome.duration * 1000, 3),
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
