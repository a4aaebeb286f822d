"""Prometheus metrics on prometheus_client, behind a small facade the rest of zt calls.

`Registry.counter/gauge` declare a family (counter names end in `_total`, as exposed), `inc/set/dec`
take a `labels` mapping (a label it lacks reads ""), `add_collector` adds values computed at scrape
time (BPF capture counters, endpoint stats), `render()` is the text exposition format 0.0.4 from
prometheus_client's `generate_latest`. The istio_tcp_* names and labels are those Istio's telemetry
(and ztunnel) report, so existing dashboards work on zt; docs/metrics.md lists every family.

Worker processes (`zt run --workers N`, zt/node/workers.py) share one directory of prometheus_client
multiprocess files: every process writes its own values there as it counts (a memory-mapped file
per process and kind), and the leader's `render()` reads them all, so a scrape never waits for a
follower. Counter files outlive their process (a dead follower's counts stay in the node's totals);
gauges are `livesum` (summed over live processes; a dead follower's are dropped by `retire`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Generic, TypeVar

import prometheus_client
from prometheus_client import values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

import zt
from zt.errors import ZtError

LabelValues = tuple[str, ...]
CollectorSample = tuple[str, str, str, float]  # (name, help, "counter" | "gauge", value)
Collect = Callable[[], Iterable[CollectorSample]]

# The body is the 0.0.4 text format (every name zt exports is a legacy name). prometheus_client
# 0.26's CONTENT_TYPE_LATEST announces version=1.0.0 (UTF-8 names), which we never write.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RETIRED = "counter_retired.db"  # dead followers' counters, folded into one file by retire()

# A `<name>_created` series per counter is prometheus_client's default; zt's exposition has never
# had them and ztunnel has none.
disable_created_metrics()  # type: ignore[no-untyped-call]


class MetricsModeError(ZtError):
    """A registry asked for a process mode (shared multiprocess files or not) it cannot have."""

    reason = "metrics_mode"


# -- the process-wide value class ------------------------------------------------------------------
# prometheus_client picks the class that holds every value once, when prometheus_client.values is
# imported: MultiProcessValue (mmap files) if PROMETHEUS_MULTIPROC_DIR is set then, else MutexValue
# (prometheus_client/values.py). Left to that, a follower started without the variable would count
# into private memory nobody scrapes, and any process that inherited it would write into a node's
# directory. So zt never relies on the import-time choice: here it is reset to MutexValue and the
# variable dropped, and only Registry.leader()/follower() switch this process to shared values,
# explicitly (`_share`), checking the switch took. Metrics read `values.ValueClass` whenever a
# series is created (prometheus_client/metrics.py `_metric_init`), so the switch covers every series
# created after it; a process switches before it creates its first one (a plain Registry refuses
# to exist in a sharing process, and a shared one in a process already counting privately).
class _ProcessMode:
    """Whether this process's values live in shared files: decided once per process."""

    def __init__(self) -> None:
        self.shared: Path | None = None
        self.private = False  # a private Registry exists: too late to switch


_mode = _ProcessMode()
values.ValueClass = values.MutexValue
os.environ.pop(MULTIPROC_ENV, None)


def _share(directory: Path) -> None:
    if _mode.shared is not None:
        raise MetricsModeError(
            f"metrics directory: got {directory}, expected none (this process already shares "
            f"{_mode.shared})"
        )
    if _mode.private:
        raise MetricsModeError(
            f"metrics directory: got {directory} in a process that already counts privately, "
            "expected the switch before the first Registry"
        )
    os.environ[MULTIPROC_ENV] = str(directory)  # MmapedValue reads its file's directory here
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _mode.shared = directory


def _unshare() -> None:
    # New series count privately from here on. The open files stay mapped (until exit): a
    # connection still closing while the node stops keeps counting into them, harmlessly, even
    # once the directory is gone, instead of failing on a closed map.
    values.ValueClass = values.MutexValue
    os.environ.pop(MULTIPROC_ENV, None)
    _mode.shared = None


def _check_shared(directory: Path) -> None:
    """Fail loudly rather than count where no scrape looks."""
    shared = getattr(values.ValueClass, "_multiprocess", False)
    if not shared or os.environ.get(MULTIPROC_ENV) != str(directory):
        raise MetricsModeError(
            f"{MULTIPROC_ENV}: got {os.environ.get(MULTIPROC_ENV)!r} with value class "
            f"{values.ValueClass.__name__}, expected {str(directory)!r} with MmapedValue"
        )


# -- families --------------------------------------------------------------------------------------
M = TypeVar("M", prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram)


class _Family(Generic[M]):
    def __init__(self, name: str, metric: M, labels: tuple[str, ...]) -> None:
        self.name = name
        self.metric: M = metric
        self.labels = labels

    def series(self, labels: Mapping[str, str] | None) -> M:
        if not self.labels:
            return self.metric
        given = labels or {}
        series: M = self.metric.labels(*(given.get(name, "") for name in self.labels))
        return series

    def samples(self) -> Iterator[Sample]:
        """This process's samples of the family (the exposed name: counters end in _total)."""
        for family in self.metric.collect():
            yield from (s for s in family.samples if s.name == self.name)


class Counter(_Family[prometheus_client.Counter]):
    def inc(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: got inc({amount}), expected an amount >= 0")
        self.series(labels).inc(amount)

    def bound(self, labels: Mapping[str, str] | None = None) -> Callable[[float], None]:
        """`inc` for one series, its label lookup done once (a caller that counts the same
        series again and again: a live connection's bytes)."""
        return self.series(labels).inc


class Gauge(_Family[prometheus_client.Gauge]):
    def inc(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        self.series(labels).inc(amount)

    def set(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.series(labels).set(value)

    def dec(self, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        self.series(labels).dec(amount)


class Histogram(_Family[prometheus_client.Histogram]):
    """Observations in fixed buckets (exposed as `<name>_bucket{le}`, `_sum`, `_count`)."""

    def observe(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.series(labels).observe(value)


Family = Counter | Gauge | Histogram


# -- collectors ------------------------------------------------------------------------------------
def _as_metrics(collect: Collect) -> Iterator[Metric]:
    """An `add_collector` callable's samples now, as prometheus_client metric families."""
    for name, help_, kind, value in collect():
        metric = Metric(_family_name(name, kind), help_, kind)
        metric.add_sample(name, {}, float(value))
        yield metric


class _Exposition:
    """One scrape: the live families, the collector values taken beforehand, then the tail."""

    def __init__(self, families: Collector, taken: list[Metric], tail: Iterable[Collector]) -> None:
        self._families = families
        self._taken = taken
        self._tail = tail

    def collect(self) -> Iterator[Metric]:
        yield from self._families.collect()
        yield from self._taken
        for collector in self._tail:
            yield from collector.collect()


def _family_name(name: str, kind: str) -> str:
    """prometheus_client names a counter family without `_total` and exposes `<family>_total`."""
    if kind == "counter":
        if not name.endswith("_total"):
            raise ValueError(f"counter name: got {name!r}, expected a name ending in _total")
        return name[: -len("_total")]
    if kind not in ("gauge", "histogram"):
        raise ValueError(f"{name}: got kind {kind!r}, expected 'counter', 'gauge' or 'histogram'")
    return name


class _BuildInfo:
    """istio_build{component="ztunnel",tag=<version>} 1: zt plays ztunnel's role, and Istio's
    ztunnel dashboard counts versions by component="ztunnel"."""

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "istio_build", "Istio component build info", labels=("component", "tag")
        )
        build.add_metric(("ztunnel", zt.__version__), 1.0)
        yield build


class _SharedFiles:
    """Every process's values from the multiprocess directory, families in name order. `lock`
    keeps a read from interleaving with retire()'s fold (which would count a follower twice or
    miss a file): renders may run on another thread than the loop that retires."""

    def __init__(self, directory: Path, lock: threading.Lock) -> None:
        path = str(directory)
        self._collector = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self._lock = lock

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            found = self._collector.collect()  # type: ignore[no-untyped-call]
            families: list[Metric] = list(found)
        for family in sorted(families, key=lambda f: f.name):
            family.samples.sort(key=lambda s: (s.name, sorted(s.labels.items())))
            yield family


# -- the registry ----------------------------------------------------------------------------------
class Registry:
    """A set of metric families. Counting is thread-safe (prometheus_client's values are);
    collectors and publish() run on the thread that owns what they read (the event loop), and a
    render's expensive part (`prepare()`'s result) may run on any thread.

    `Registry()`: this process's values only. `Registry.leader()` / `Registry.follower(dir)`: the
    processes of one node sharing a multiprocess directory (see the module docstring)."""

    def __init__(self, *, shared: Path | None = None, owns_dir: bool = False) -> None:
        self.directory = shared
        self._owns_dir = owns_dir
        self._families: dict[str, Family] = {}
        self._collectors: list[Collect] = []
        self._published: dict[str, tuple[Family, float]] = {}
        self._lock = threading.Lock()
        self._files_lock = threading.Lock()
        self._exposition = CollectorRegistry(auto_describe=False)
        if shared is None:
            if _mode.shared is not None:
                raise MetricsModeError(
                    f"Registry(): got a private registry in a process sharing {_mode.shared}, "
                    "expected Registry.leader() or Registry.follower()"
                )
            _mode.private = True
        else:
            _check_shared(shared)
            self._exposition.register(_SharedFiles(shared, self._files_lock))
        # after zt's families: process_* of this process (with workers, the leader's; see
        # docs/metrics.md) and istio_build
        self._tail = (ProcessCollector(registry=None), _BuildInfo())

    @classmethod
    def leader(cls, parent: Path | None = None) -> Registry:
        """The registry of a node with follower workers: a private directory (mode 0700) under
        `parent` (the temp dir by default), created empty; `close()` removes it. Directories left
        by leaders that were killed (their PID is gone) are removed first."""
        base = Path(parent or tempfile.gettempdir())
        _sweep(base)
        directory = Path(tempfile.mkdtemp(prefix=f"zt-metrics-{os.getpid()}-", dir=base))
        try:
            _share(directory)
            return cls(shared=directory, owns_dir=True)
        except BaseException:
            if _mode.shared == directory:  # not left sharing a directory that is gone
                _unshare()
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def follower(cls, directory: Path) -> Registry:
        """A follower worker's: its values go into the leader's `directory`."""
        if not directory.is_dir():
            raise MetricsModeError(
                f"--metrics-dir: got {directory}, expected the leader's directory"
            )
        _share(directory)
        return cls(shared=directory)

    # -- declaring -------------------------------------------------------------------------------
    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        family = self._family(name, help_, "counter", labels)
        assert isinstance(family, Counter)
        return family

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Gauge:
        family = self._family(name, help_, "gauge", labels)
        assert isinstance(family, Gauge)
        return family

    def histogram(
        self, name: str, help_: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        family = self._family(name, help_, "histogram", labels, buckets)
        assert isinstance(family, Histogram)
        return family

    def _family(
        self,
        name: str,
        help_: str,
        kind: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...] = (),
    ) -> Family:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._new(name, help_, kind, labels, register=True, buckets=buckets)
                self._families[name] = family
            elif family.labels != labels or _kind(family) != kind:
                raise ValueError(
                    f"metric {name}: got {kind} {labels}, expected {_kind(family)} "
                    f"{family.labels} as first declared"
                )
            return family

    def _new(
        self,
        name: str,
        help_: str,
        kind: str,
        labels: tuple[str, ...],
        *,
        register: bool,
        buckets: tuple[float, ...] = (),
    ) -> Family:
        # With shared files the exposition reads them (_SharedFiles), not the objects.
        into = self._exposition if register and self.directory is None else None
        family_name = _family_name(name, kind)
        if kind == "counter":
            counter = prometheus_client.Counter(family_name, help_, labels, registry=into)
            return Counter(name, counter, labels)
        if kind == "histogram":
            histogram = prometheus_client.Histogram(
                name, help_, labels, registry=into, buckets=buckets
            )
            return Histogram(name, histogram, labels)
        # livesum: a gauge is this process's share (open connections, ...) and the node's value
        # is the sum over live processes; node-wide gauges are set by the leader alone.
        gauge = prometheus_client.Gauge(
            family_name, help_, labels, registry=into, multiprocess_mode="livesum"
        )
        return Gauge(name, gauge, labels)

    def add_collector(self, collect: Collect) -> None:
        """A callable yielding (name, help, kind, value) at render time (e.g. BPF counters)."""
        with self._lock:
            self._collectors.append(collect)

    # -- reading ---------------------------------------------------------------------------------
    def value(self, name: str, **labels: str) -> float:
        """The current value of one series in this process (0 when absent): for tests and the
        admin API."""
        family = self._families.get(name)
        if family is None:
            return 0.0
        want = {label: labels.get(label, "") for label in family.labels}
        return next((s.value for s in family.samples() if s.labels == want), 0.0)

    def series(self, name: str) -> dict[LabelValues, float]:
        """Every series of one family in this process, by label values."""
        family = self._families.get(name)
        if family is None:
            return {}
        return {tuple(s.labels[n] for n in family.labels): s.value for s in family.samples()}

    def render(self) -> str:
        """The exposition: this registry's families and collectors (with shared files, every
        process's values, this one's collectors published first), then this process's process_*
        and istio_build."""
        return self.prepare()().decode()

    def prepare(self) -> Callable[[], bytes]:
        """Take the collectors' values now, on the thread that owns what they read; the function
        returned renders the exposition (prometheus_client's generate_latest, the costly part)
        and may run on a worker thread, off the event loop."""
        taken: list[Metric] = []
        if self.directory is None:
            with self._lock:
                collectors = list(self._collectors)
            taken = [metric for collect in collectors for metric in _as_metrics(collect)]
        else:
            self.publish()
        exposition = _Exposition(self._exposition, taken, self._tail)
        return lambda: generate_latest(exposition)

    # -- sharing ---------------------------------------------------------------------------------
    def publish(self) -> None:
        """Write the collectors' current values into this process's shared files (followers do it
        periodically, the leader before each render); nothing to do for a private registry.
        Counters advance by the difference (a source that restarted from 0 counts anew)."""
        if self.directory is None:
            return
        with self._lock:
            collectors = list(self._collectors)
        for collect in collectors:
            for name, help_, kind, value in collect():
                self._publish_one(name, help_, kind, float(value))

    def _publish_one(self, name: str, help_: str, kind: str, value: float) -> None:
        with self._lock:
            if name in self._families:
                raise ValueError(f"collector sample {name}: got a name a family already has")
            entry = self._published.get(name)
            if entry is None:
                entry = (self._new(name, help_, kind, (), register=False), 0.0)
            family, last = entry
            if isinstance(family, Counter):
                family.inc(value - last if value >= last else value)
            elif isinstance(family, Gauge):
                family.set(value)
            self._published[name] = (family, value)

    def retire(self, pid: int) -> None:
        """A follower died (and was reaped): its gauges leave the sums, its counters stay,
        folded into one file so restarts do not pile up files. No render reads meanwhile."""
        if self.directory is None:
            return
        with self._files_lock:
            mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
            _fold_counters(self.directory, pid)

    def close(self) -> None:
        """With shared files: stop sharing; the leader's directory is removed."""
        if self.directory is None:
            return
        _unshare()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None


def _kind(family: Family) -> str:
    if isinstance(family, Histogram):
        return "histogram"
    return "counter" if isinstance(family, Counter) else "gauge"


def _fold_counters(directory: Path, pid: int) -> None:
    dead = directory / f"counter_{pid}.db"
    if not dead.exists():
        return
    retired = directory / RETIRED
    files = [str(f) for f in (retired, dead) if f.exists()]
    merged: list[Metric] = list(
        MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
    )
    staging = directory / (RETIRED + ".new")  # not *.db: a scrape never reads it half-written
    # MmapedDict keeps what a file holds: one left by a fold that failed midway would carry its
    # stale keys into the retired file
    staging.unlink(missing_ok=True)
    out = MmapedDict(str(staging))  # type: ignore[no-untyped-call]
    try:
        for family in merged:
            for s in family.samples:
                key = mmap_key(family.name, s.name, list(s.labels), list(s.labels.values()),
                               family.documentation)  # fmt: skip
                out.write_value(key, s.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(staging, retired)
    dead.unlink()


def _sweep(base: Path) -> None:
    """Remove zt-metrics-<pid>-* directories whose leader is gone (it was killed, no close())."""
    for path in base.glob("zt-metrics-*-*"):
        pid = path.name.split("-")[2]
        try:  # another leader may sweep the same directory at the same moment
            mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "MetricsModeError",
    "Registry",
]
