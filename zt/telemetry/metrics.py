"""Prometheus metrics: counters and gauges with labels, rendered in the text exposition format 0.0.4.

Kept dependency-free and synchronous: the data path increments integers; only `/metrics` renders.
The istio_tcp_* names and labels are those Istio's telemetry (and ztunnel) report, so existing
dashboards work on zt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

LabelValues = tuple[str, ...]

# The labels ztunnel attaches to istio_tcp_* metrics (a subset that zt knows at connection time).
TCP_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


def _escape(value: str) -> str:
    # Exposition format: "label_value can be any sequence of UTF-8 characters, but the backslash
    # (\), double-quote ("), and line feed (\n) characters have to be escaped".
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


@dataclass
class _Family:
    name: str
    help: str
    kind: str  # "counter" | "gauge"
    labels: tuple[str, ...]
    values: dict[LabelValues, float]


class Registry:
    """A set of metric families. Thread-safe: capture counters are read from a worker thread."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[Callable[[], Iterable[tuple[str, str, str, float]]]] = []
        self._lock = threading.Lock()

    def _family(self, name: str, help_: str, kind: str, labels: tuple[str, ...]) -> _Family:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = _Family(name, help_, kind, labels, {})
                self._families[name] = family
            elif family.labels != labels or family.kind != kind:
                raise ValueError(f"metric {name} re-declared with other labels or kind")
            return family

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self._family(name, help_, "counter", labels), self._lock)

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self._family(name, help_, "gauge", labels), self._lock)

    def add_collector(self, collect: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        """A callable yielding (name, help, kind, value) at render time (e.g. BPF counters)."""
        self._collectors.append(collect)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one series (0 when absent): for tests and the admin API."""
        family = self._families.get(name)
        if family is None:
            return 0.0
        key = tuple(labels.get(label, "") for label in family.labels)
        return family.values.get(key, 0.0)

    def series(self, name: str) -> dict[LabelValues, float]:
        family = self._families.get(name)
        return dict(family.values) if family else {}

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            families = [(f, dict(f.values)) for f in self._families.values()]
        for family, values in families:
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for key, value in sorted(values.items()):
                lines.append(f"{family.name}{_labels(family.labels, key)} {_number(value)}")
        for collect in self._collectors:
            for name, help_, kind, value in collect():
                lines += [
                    f"# HELP {name} {help_}",
                    f"# TYPE {name} {kind}",
                    f"{name} {_number(value)}",
                ]
        return "\n".join(lines) + "\n"


def _labels(names: tuple[str, ...], values: LabelValues) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class Counter:
    def __init__(self, family: _Family, lock: threading.Lock) -> None:
        self._family = family
        self._lock = lock

    def inc(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = tuple((labels or {}).get(n, "") for n in self._family.labels)
        with self._lock:
            self._family.values[key] = self._family.values.get(key, 0.0) + amount


class Gauge(Counter):
    def set(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = tuple((labels or {}).get(n, "") for n in self._family.labels)
        with self._lock:
            self._family.values[key] = value

    def dec(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        key = tuple((labels or {}).get(n, "") for n in self._family.labels)
        with self._lock:
            self._family.values[key] = self._family.values.get(key, 0.0) - amount
