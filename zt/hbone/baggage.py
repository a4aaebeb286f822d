"""The `baggage` header of HBONE CONNECT requests and responses, as ztunnel writes and reads it
(its src/baggage.rs): the sender's telemetry names as W3C Baggage list members with
OpenTelemetry semantic-convention keys.

ztunnel sends its source workload's names on every CONNECT and the destination workload's on the
200; the receiver fills a peer's istio_tcp_* labels from them when its own state does not hold
that peer (docs/metrics.md). The names are labels, never identity: policy never reads them.

W3C Baggage §3.2.1: `baggage-string = list-member 0*179( OWS "," OWS list-member )`,
`list-member = key OWS "=" OWS value *( OWS ";" OWS property )`. ztunnel joins members with ","
and no whitespace, writes no properties, and parses by splitting on "," and "="; zt does the same
and also trims whitespace and drops properties, which ztunnel's split would keep in the value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields

# OpenTelemetry semantic conventions (k8s.*, service.*, cloud.*), ztunnel's key for each field.
_KEYS = {
    "cluster_id": "k8s.cluster.name",
    "namespace": "k8s.namespace.name",
    "service_name": "service.name",
    "revision": "service.version",
    "region": "cloud.region",
    "zone": "cloud.availability_zone",
}
# ztunnel writes `k8s.<workload type>.name` (its Workload.workload_type, lowercased; istiod's
# default is a Deployment) and reads any of these.
WORKLOAD_TYPES = ("deployment", "cronjob", "pod", "job")
DEFAULT_WORKLOAD_TYPE = "deployment"
# A value zt writes: what a label may hold (zt/config/schema.py `LabelValue`), which needs no
# percent-encoding (W3C Baggage §3.2.1.1 `baggage-octet` excludes only CTLs, SP, DQUOTE, ",",
# ";", "\\" and "=" among ASCII).
_VALUE = re.compile(r"[A-Za-z0-9._-]+")
# At most this many bytes of received baggage are read (W3C Baggage §3.3.1: "at least 8192
# bytes" must be propagated; ours are labels, and a peer's long header gets no further).
MAX_BAGGAGE = 8192


@dataclass(frozen=True)
class Baggage:
    """A workload's telemetry names; "" is unset (not written, not read)."""

    cluster_id: str = ""
    namespace: str = ""
    workload_name: str = ""
    service_name: str = ""  # the canonical service
    revision: str = ""  # the canonical revision
    region: str = ""
    zone: str = ""

    def header(self, workload_type: str = DEFAULT_WORKLOAD_TYPE) -> str | None:
        """The header value ztunnel's `baggage_header_val` writes, in its order; None when every
        name is unset (an empty header is not a valid field value). Every tunnel sends one: the
        few distinct values a node has are formatted once (measured here: 11 µs formatted, 4 µs
        with the lookup and building `Baggage`)."""
        return _header(self, workload_type)

    def _format(self, workload_type: str) -> str | None:
        members = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not value or not _VALUE.fullmatch(value):
                continue  # unset, or a character baggage would have to escape: left out
            key = f"k8s.{workload_type}.name" if f.name == "workload_name" else _KEYS[f.name]
            members.append(f"{key}={value}")
        return ",".join(members) or None

    @classmethod
    def parse(cls, values: str | Iterable[str] | None) -> Baggage:
        """Names from received header values (several header lines are one list, RFC 9110 §5.3).
        Unknown keys, members without "=" and empty values are ignored, as ztunnel does: baggage
        is a hint, a malformed one never fails a connection."""
        if values is None:
            return cls()
        text = values if isinstance(values, str) else ",".join(values)
        found: dict[str, str] = {}
        by_key = {key: name for name, key in _KEYS.items()}
        by_key.update({f"k8s.{t}.name": "workload_name" for t in WORKLOAD_TYPES})
        for member in text[:MAX_BAGGAGE].split(","):
            key, sep, value = member.partition("=")
            value = value.split(";", 1)[0].strip()
            name = by_key.get(key.strip())
            if sep and name is not None and _VALUE.fullmatch(value):
                found[name] = value  # a later member wins, as in ztunnel's loop
        return cls(**found)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@functools.lru_cache(maxsize=1024)
def _header(names: Baggage, workload_type: str) -> str | None:
    return names._format(workload_type)
