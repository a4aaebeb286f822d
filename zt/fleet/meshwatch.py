"""A node's mesh from etcd: list {p}/mesh/, then watch it, into the SnapshotStore (docs/fleet.md).

The same promises as the file watcher (zt/config/watcher.py): a bad update keeps the last good
snapshot (refused with the key and field path, counted by reason); the loop never dies. And what
etcd adds:
- Events arriving within `batch_window` of the first are applied as one update (at most
  MAX_BATCH_EVENTS / MAX_BATCH_SECONDS), so a push of many objects is one swap, not many.
- etcd unreachable: `zt_config_synced` 0, the last snapshot keeps serving, its age grows
  (`zt_config_snapshot_age_seconds`, computed at scrape time), and the watch resumes from the last
  revision seen + 1 on the next endpoint after a jittered backoff: no event is lost.
- The resume revision was compacted: list again and swap if anything changed.
- `cache`: every accepted snapshot is also written (atomically) as a normalized mesh file, which
  follower worker processes watch with FileWatcher and a node restarted while etcd is down starts
  from.
Decoding runs in a worker thread: a 5,000-workload mesh never stalls the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from zt.config.dump import document
from zt.config.loader import load_file
from zt.config.watcher import ReloadFailure, SnapshotStore
from zt.errors import ConfigError, ZtError
from zt.fleet import keys
from zt.fleet.etcd import EtcdClient, WatchBatch, WatchEvent, prefix_end
from zt.fleet.etcderrors import EtcdCompacted, EtcdUnavailable
from zt.fleet.meshdoc import MeshDecoder
from zt.identity._files import write_atomic
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.fleet.mesh")

MAX_BATCH_EVENTS = 1000
MAX_BATCH_SECONDS = 0.2

_Outcome = Snapshot | ReloadFailure | None  # None: the events changed nothing


class EtcdMeshSource:
    def __init__(
        self,
        connect: Callable[[], EtcdClient],
        prefix: str,
        *,
        registry: Registry,
        cache: Path | None = None,
        batch_window: float = 0.02,
        backoff: tuple[float, float] = (0.2, 5.0),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.prefix = keys.check_prefix(prefix)
        self._connect = connect
        self._client: EtcdClient | None = None
        self.cache = cache
        self.batch_window = batch_window
        self.backoff = backoff
        self._clock, self._wall, self._jitter = clock, wall, jitter
        self._store: SnapshotStore | None = None
        self._decoder = MeshDecoder(self.prefix)
        self._objects: dict[bytes, bytes] = {}
        self._range = (keys.mesh_prefix(self.prefix), prefix_end(keys.mesh_prefix(self.prefix)))
        self.revision = 0  # every event up to here is in _objects
        self._listed = False  # False: start-up came from the cache; list before watching
        self.synced = False
        self._stale_since = clock()  # when the snapshot was last known current (while unsynced)
        self.last_error: str | None = None
        self.swaps = 0
        self._synced_gauge = registry.gauge(
            "zt_config_synced", "1 while the mesh watch on etcd is established"
        )
        self._revision_gauge = registry.gauge(
            "zt_config_revision", "etcd revision of the mesh this node has applied"
        )
        self._errors = registry.counter(
            "zt_config_object_errors_total",
            "Mesh updates from etcd refused, by reason",
            ("reason",),
        )
        registry.add_collector(self._collect_metrics)
        self._synced_gauge.set(0)

    # --- start-up -----------------------------------------------------------------------------

    @property
    def client(self) -> EtcdClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def initial(self, timeout: float) -> Snapshot:
        """The mesh as etcd has it now; when no endpoint answers within `timeout` and the cache
        file is readable, the cached mesh (not synced: run() lists as soon as etcd answers)."""
        try:
            async with asyncio.timeout(timeout):
                await self._list()
            snapshot = await asyncio.to_thread(self._decoder.decode, self._objects)
        except (EtcdUnavailable, TimeoutError, ConfigError) as exc:
            # a mesh in etcd that does not validate: serve the last good one (run() lists again
            # and reports the refusal to the store)
            cached = self._from_cache(exc)
            if cached is None:
                raise
            self._listed = False
            return cached
        self._set_synced(True)
        await asyncio.to_thread(self._write_cache, snapshot)
        log.info("mesh from etcd at revision %d (%d objects)", self.revision, len(self._objects))
        return snapshot

    def _from_cache(self, exc: BaseException) -> Snapshot | None:
        if self.cache is None:
            return None
        try:
            snapshot = load_file(self.cache)
            age = max(0.0, self._wall() - os.stat(self.cache).st_mtime)
        except (ZtError, OSError):
            return None
        self._stale_since = self._clock() - age
        self.last_error = _line(exc)
        log.warning("etcd unreachable (%s): starting from %s (%.0f s old)", exc, self.cache, age)
        return snapshot

    def attach(self, store: SnapshotStore) -> None:
        self._store = store

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch forever. Only cancellation ends it."""
        failures = 0
        try:
            while True:
                try:
                    if not self._listed:
                        await self._relist()
                    await self._watch()
                except asyncio.CancelledError:
                    raise
                except EtcdCompacted as exc:
                    log.info("mesh watch: %s; listing again", exc)
                    self._listed = False
                    continue
                except Exception as exc:  # EtcdUnavailable, auth, a bug: all retried
                    failures = 0 if self.synced else failures
                    self._lost(exc)
                    failures += 1
                    await asyncio.sleep(self._delay(failures))
                    continue
        finally:
            if self._client is not None:
                await self._client.close()

    def _delay(self, failures: int) -> float:
        """Exponential backoff, half of it jittered: in [step/2, step], step = base * 2^n <= cap."""
        base, cap = self.backoff
        step = min(cap, base * float(2 ** min(failures - 1, 30)))
        return step / 2 + step / 2 * self._jitter()

    async def _list(self) -> None:
        kvs, revision = await self.client.range(*self._range)
        self._objects = {kv.key: kv.value for kv in kvs}
        self.revision = revision
        self._listed = True

    async def _relist(self) -> None:
        before = dict(self._objects)
        await self._list()
        self._set_synced(True)
        if self._objects != before or self._store is None or self.swaps == 0:
            await self._decode_and_deliver()

    async def _watch(self) -> None:
        """One watch from revision + 1 until it fails (raises)."""
        queue: asyncio.Queue[WatchBatch | BaseException] = asyncio.Queue()
        reader = asyncio.create_task(self._read(queue))
        try:
            await self._probe()
            self._set_synced(True)
            while True:
                events, revision, error = await self._collect(queue)
                if events:
                    self._apply_events(events)
                    await self._decode_and_deliver()
                self.revision = max(self.revision, revision)
                self._revision_gauge.set(self.revision)
                if error is not None:
                    raise error
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, queue: asyncio.Queue[WatchBatch | BaseException]) -> None:
        try:
            watch = self.client.watch(*self._range, start_revision=self.revision + 1)
            # aclosing: a cancelled reader closes the stream and its heartbeat now, not whenever
            # the abandoned generator is collected
            async with contextlib.aclosing(watch):
                async for batch in watch:
                    queue.put_nowait(batch)
            queue.put_nowait(EtcdUnavailable([("watch", "the stream ended")]))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)

    async def _probe(self) -> None:
        """A one-key read on the watch's endpoints: the watch API does not surface its "created"
        answer, and a node must not report synced before etcd has answered it."""
        await self.client.range(*self._range, keys_only=True, limit=1)  # a node may read only this

    async def _collect(
        self, queue: asyncio.Queue[WatchBatch | BaseException]
    ) -> tuple[list[WatchEvent], int, BaseException | None]:
        """The events of the first batch and of those arriving within batch_window of it."""
        loop = asyncio.get_running_loop()
        item = await queue.get()
        if isinstance(item, BaseException):
            return [], 0, item
        events, revision = list(item.events), _revision_of(item)
        start = loop.time()
        deadline = min(start + self.batch_window, start + MAX_BATCH_SECONDS)
        while len(events) < MAX_BATCH_EVENTS:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if isinstance(item, BaseException):
                return events, revision, item
            events += item.events
            revision = max(revision, _revision_of(item))
        return events, revision, None

    # --- applying updates -----------------------------------------------------------------------

    def _apply_events(self, events: Iterable[WatchEvent]) -> bool:
        """Into the key/value map; True when it changed."""
        changed = False
        start, end = self._range
        for event in events:
            key = event.kv.key
            if not start <= key < end:
                continue
            if event.kind == "delete":
                changed |= self._objects.pop(key, None) is not None
            elif self._objects.get(key) != event.kv.value:
                self._objects[key] = event.kv.value
                changed = True
            self.revision = max(self.revision, event.kv.mod_revision)
        return changed

    def apply_batch(self, events: Sequence[WatchEvent]) -> _Outcome:
        """Apply one batch of events synchronously (tests drive this without etcd): the new
        snapshot (swapped into the attached store), the refusal (rejected there), or None."""
        if not self._apply_events(events):
            return None
        outcome = self._decode()
        self._deliver(outcome)
        if isinstance(outcome, Snapshot):
            self._write_cache(outcome)
        return outcome

    def _decode(self) -> Snapshot | ReloadFailure:
        try:
            return self._decoder.decode(self._objects)
        except Exception as exc:  # ConfigError by key, or a bug: the last good one stays
            return ReloadFailure.of(exc, self._wall())

    async def _decode_and_deliver(self) -> None:
        outcome = await asyncio.to_thread(self._decode)
        if isinstance(outcome, Snapshot):
            # before the swap: the swap makes the leader tell its followers to re-read this file
            await asyncio.to_thread(self._write_cache, outcome)
        self._deliver(outcome)

    def _deliver(self, outcome: Snapshot | ReloadFailure) -> None:
        self._revision_gauge.set(self.revision)
        if isinstance(outcome, ReloadFailure):
            self._errors.inc(labels={"reason": outcome.reason})
            log.error("mesh update at revision %d refused: %s", self.revision, outcome.message)
            if self._store is not None:
                self._store.reject(outcome)
            return
        self.swaps += 1
        if self._store is not None:
            self._store.swap(outcome)
        log.info("mesh updated to revision %d (%d objects)", self.revision, len(self._objects))

    def _write_cache(self, snapshot: Snapshot) -> None:
        if self.cache is None:
            return
        data = json.dumps(document(snapshot, with_identity=False), separators=(",", ":"))
        try:
            write_atomic(self.cache, data.encode())
        except ZtError as exc:  # a full disk must not stop the mesh from updating
            log.error("mesh cache not written: %s", exc)

    # --- health ---------------------------------------------------------------------------------

    def _set_synced(self, synced: bool) -> None:
        if synced and not self.synced:
            log.info("mesh watch on etcd established (revision %d)", self.revision)
            self.last_error = None
        if not synced and self.synced:
            self._stale_since = self._clock()
        self.synced = synced
        self._synced_gauge.set(1 if synced else 0)
        self._revision_gauge.set(self.revision)

    def _lost(self, exc: BaseException) -> None:
        if self.synced:
            log.warning("mesh watch on etcd lost at revision %d: %s", self.revision, exc)
        self.last_error = _line(exc)
        self._set_synced(False)

    def age_seconds(self) -> float:
        """0 while the watch is healthy; since when the snapshot was last known current."""
        return 0.0 if self.synced else max(0.0, self._clock() - self._stale_since)

    def _collect_metrics(self) -> Iterable[tuple[str, str, str, float]]:
        help_ = "Seconds since the mesh snapshot was last known to match etcd (0 while synced)"
        yield ("zt_config_snapshot_age_seconds", help_, "gauge", self.age_seconds())

    def status(self) -> dict[str, object]:
        endpoint = self._client.endpoint_order()[0] if self._client is not None else None
        return {
            "source": "etcd",
            "prefix": self.prefix,
            "synced": self.synced,
            "revision": self.revision,
            "age_seconds": round(self.age_seconds(), 3),
            "endpoint": endpoint,
            "last_error": self.last_error,
        }

    def describe(self) -> str | None:
        """One line for readiness detail while not synced (None when synced)."""
        if self.synced:
            return None
        why = f": {self.last_error}" if self.last_error else ""
        return (
            f"mesh not synced with etcd for {self.age_seconds():.1f} s "
            f"(serving revision {self.revision}){why}"
        )


def _revision_of(batch: WatchBatch) -> int:
    """The revision a batch brings us to: its newest event's. An event-less answer (a progress
    notification) vouches for its header revision. (A catch-up answer's header may run ahead of
    its events, so it is not trusted when events are present.)"""
    if batch.events:
        return max(e.kv.mod_revision for e in batch.events)
    return batch.revision


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
