"""Reload the mesh file when it changes: atomic snapshot swap; a bad edit keeps the last good one.

`SnapshotStore` is the single place the running proxy reads the current snapshot from. `FileWatcher`
polls the file's stat signature (inode, size, mtime) so editors that replace the file (rename over
it) and editors that rewrite it in place are both seen.

Rules that keep an edit from ever failing open:
- Debounce: a changed file is loaded only once its signature has held still for `settle` seconds
  (with the default, two polls in a row), and a load whose file changed while it was read is
  discarded and retried once the file settles. A rewrite caught half-written is not loaded.
- Any exception from loading (ConfigError, RecursionError, MemoryError, OSError, a bug) keeps the
  last good snapshot, is counted by reason and kept as `last_failure`; the watcher loop never dies.
- Each signature is tried once: a bad file is reported once, not once per poll.
`poll()` is synchronous and testable with a fake clock; `run()` is its asyncio loop, which loads in
a worker thread so a large file never stalls the data path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from zt.config.loader import load_file
from zt.errors import ZtError
from zt.state.model import Workload
from zt.state.snapshot import Snapshot

log = logging.getLogger("zt.config")

Listener = Callable[[Snapshot, Snapshot], None]  # (old, new)
MAX_FAILURE_CHARS = 4000  # ConfigError bounds itself; foreign exceptions are clipped here


@dataclass(frozen=True)
class ReloadFailure:
    """Why a reload was refused: `reason` is the metric label, `message` bounded text."""

    reason: str
    message: str
    at: float  # wall clock (time.time()), for humans reading /config_dump

    @classmethod
    def of(cls, exc: BaseException, at: float) -> ReloadFailure:
        if isinstance(exc, ZtError):
            reason = exc.reason
        elif isinstance(exc, RecursionError):
            reason = "recursion"
        elif isinstance(exc, MemoryError):
            reason = "out_of_memory"
        elif isinstance(exc, OSError):
            reason = "io"
        else:
            reason = "internal"
        text = str(exc) if isinstance(exc, ZtError) else f"{type(exc).__name__}: {exc}"
        if len(text) > MAX_FAILURE_CHARS:
            text = text[:MAX_FAILURE_CHARS] + f"... ({len(text)} chars)"
        return cls(reason, text, at)


def with_retained(snapshot: Snapshot, retained: Iterable[Workload]) -> Snapshot:
    """`snapshot` plus the retained workloads it lacks (by uid), unless another workload of the
    snapshot now holds one of their addresses (then the file's new owner wins)."""
    extra = tuple(
        w
        for w in retained
        if w.uid not in snapshot.by_uid
        and not any((w.network, ip) in snapshot.by_address for ip in w.ips)
    )
    if not extra:
        return snapshot
    return Snapshot.build(snapshot.workloads + extra, snapshot.services, snapshot.policies)


class SnapshotStore:
    """Holds the current snapshot; readers take `store.current` once per decision.

    `loaded` is the newest file as read; `current` is what the data path serves: `loaded` plus
    the workloads of pods this process still serves that the file lacks (`retain()`), i.e. pods
    in their removal grace period (zt/node/reconcile.py). Until a pod is removed for good it is
    served as the workload it was: its namespace and selected policies still apply to it, where
    a half-written file would otherwise leave it a stranger no policy names."""

    def __init__(self, initial: Snapshot) -> None:
        self.loaded = initial
        self._current = initial
        self._retained: Callable[[], Iterable[Workload]] = tuple
        self.generation = 1
        self.reload_errors = 0
        self.errors_by_reason: dict[str, int] = {}
        self.last_error: ReloadFailure | None = None  # set while the newest file is refused
        self.last_failure: ReloadFailure | None = None  # the most recent refusal, ever
        self._listeners: list[Listener] = []
        self._reject_listeners: list[Callable[[ReloadFailure], None]] = []

    @property
    def current(self) -> Snapshot:
        return self._current

    @property
    def last_reload_ok(self) -> bool:
        return self.last_error is None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def retain(self, served: Callable[[], Iterable[Workload]]) -> None:
        """`served()`: the workloads this process serves now (asked at every swap/refresh)."""
        self._retained = served
        self.refresh()

    def refresh(self) -> None:
        """Recompute `current` after the served pods changed (a pod removed for good leaves the
        view; no generation, no listeners: the file did not change)."""
        self._current = with_retained(self.loaded, self._retained())

    def on_reject(self, listener: Callable[[ReloadFailure], None]) -> None:
        self._reject_listeners.append(listener)

    def swap(self, new: Snapshot) -> None:
        self.loaded = new
        view = with_retained(new, self._retained())
        old, self._current = (
            self._current,
            view,
        )  # one reference assignment: readers never see a mix
        self.generation += 1
        self.last_error = None
        for listener in self._listeners:
            _call(listener, old, view)

    def reject(self, failure: ReloadFailure) -> None:
        self.reload_errors += 1
        self.errors_by_reason[failure.reason] = self.errors_by_reason.get(failure.reason, 0) + 1
        self.last_error = self.last_failure = failure
        for listener in self._reject_listeners:
            _call(listener, failure)

    def status(self) -> dict[str, object]:
        """For /config_dump and readiness detail."""
        last = self.last_failure
        return {
            "generation": self.generation,
            "last_reload_ok": self.last_reload_ok,
            "reload_errors": self.reload_errors,
            "reload_errors_by_reason": dict(sorted(self.errors_by_reason.items())),
            "last_failure": None
            if last is None
            else {"reason": last.reason, "message": last.message, "at": last.at},
        }

    def describe(self) -> str | None:
        """One line when the newest file is refused (None when it is what we serve)."""
        failure = self.last_error
        if failure is None:
            return None
        first = failure.message.splitlines()[-1].strip() if failure.message else ""
        return (
            f"serving generation {self.generation}; the newest file was refused "
            f"({failure.reason}): {first[:200]}"
        )


def _call(listener: Callable[..., None], *args: object) -> None:
    """A subscriber's bug must not stop the others or the watcher."""
    try:
        listener(*args)
    except Exception:
        log.exception("config listener %r failed", listener)


@dataclass(frozen=True)
class Signature:
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_signature(path: Path) -> Signature | None:
    """None while the file is missing: a state like any other (it settles, and the load fails)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Signature(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_Outcome = Snapshot | ReloadFailure | None  # None: the file changed while it was read


class FileWatcher:
    def __init__(
        self,
        path: Path,
        store: SnapshotStore,
        loader: Callable[[Path], Snapshot] = load_file,
        *,
        settle: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        loaded: Signature | None = None,
    ) -> None:
        """`loaded`: the file's signature taken just before the start-up load (`file_signature()`),
        so an edit made between that load and this watcher is still seen; None: the file as it
        is now is the one loaded."""
        self.path = path
        self.store = store
        self.settle = settle
        self._loader = loader
        self._clock = clock
        self._candidate = file_signature(path)  # what the file looks like now
        self._since = clock()  # since when it looks like that
        self._attempted = loaded or self._candidate  # the start-up load read this version
        self._busy = False
        self.polls = 0
        self.loads = 0

    def _due(self, now: float, *, force: bool) -> bool:
        """Record what the file looks like; True when a settled, untried version is there."""
        now_seen = file_signature(self.path)
        if now_seen != self._candidate:
            self._candidate, self._since = now_seen, now
        if self._busy or now_seen == self._attempted:
            return False
        return force or now - self._since >= self.settle

    def _attempt(self, expected: Signature | None) -> _Outcome:
        """Load; runs in a worker thread under run(). Never raises an Exception."""
        self.loads += 1
        try:
            outcome: _Outcome = self._loader(self.path)
        except Exception as exc:  # RecursionError, MemoryError, OSError, bugs: all kept out
            outcome = ReloadFailure.of(exc, time.time())
        if file_signature(self.path) != expected:
            return None  # written to while we read it: whatever we read may be half of it
        return outcome

    def _apply(self, signature: Signature | None, outcome: _Outcome) -> bool:
        if outcome is None:
            log.info("config %s changed while it was read; waiting for it to settle", self.path)
            return False
        self._attempted = signature
        if isinstance(outcome, ReloadFailure):
            self.store.reject(outcome)
            log.error(
                "config reload rejected (%s), keeping generation %d: %s",
                outcome.reason,
                self.store.generation,
                outcome.message,
            )
            return False
        self.store.swap(outcome)
        log.info("config reloaded from %s (generation %d)", self.path, self.store.generation)
        return True

    def poll(self, now: float | None = None, *, force: bool = False) -> bool:
        """Reload if a changed file has settled (`force`: changed at all, e.g. a follower told
        to catch up with its leader). True when a new snapshot was swapped in."""
        self.polls += 1
        if not self._due(self._clock() if now is None else now, force=force):
            return False
        signature = self._candidate
        self._busy = True
        try:
            outcome = self._attempt(signature)
        finally:
            self._busy = False
        return self._apply(signature, outcome)

    async def poll_async(self, *, force: bool = False) -> bool:
        """poll(), with the load in a worker thread (a large file never stalls the loop)."""
        self.polls += 1
        if not self._due(self._clock(), force=force):
            return False
        signature = self._candidate
        self._busy = True
        try:
            outcome = await asyncio.to_thread(self._attempt, signature)
        finally:
            self._busy = False
        return self._apply(signature, outcome)

    async def run(self, interval: float = 1.0) -> None:
        """Poll forever. Nothing a file (or a bug) does ends this loop; only cancellation."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_async()
            except Exception:
                log.exception("config watcher poll failed; still watching %s", self.path)
