"""Reload the mesh file when it changes: atomic snapshot swap; a bad edit keeps the last good one.

`SnapshotStore` is the single place the running proxy reads the current snapshot from. `FileWatcher`
polls the file's stat signature (inode, size, mtime) so editors that replace the file (rename over
it) and editors that rewrite it in place are both seen; `poll()` is synchronous and testable, `run()`
is its asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zt.config.loader import load_file
from zt.errors import ConfigError
from zt.state.snapshot import Snapshot

log = logging.getLogger("zt.config")

Listener = Callable[[Snapshot, Snapshot], None]  # (old, new)


class SnapshotStore:
    """Holds the current snapshot; readers take `store.current` once per decision."""

    def __init__(self, initial: Snapshot) -> None:
        self._current = initial
        self.generation = 1
        self.reload_errors = 0
        self.last_error: ConfigError | None = None
        self._listeners: list[Listener] = []

    @property
    def current(self) -> Snapshot:
        return self._current

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def swap(self, new: Snapshot) -> None:
        old, self._current = self._current, new  # one reference assignment: readers never see a mix
        self.generation += 1
        self.last_error = None
        for listener in self._listeners:
            listener(old, new)

    def reject(self, error: ConfigError) -> None:
        self.reload_errors += 1
        self.last_error = error


@dataclass(frozen=True)
class _Signature:
    inode: int
    size: int
    mtime_ns: int


def _signature(path: Path) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Signature(st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    def __init__(
        self,
        path: Path,
        store: SnapshotStore,
        loader: Callable[[Path], Snapshot] = load_file,
    ) -> None:
        self.path = path
        self.store = store
        self._loader = loader
        self._seen = _signature(path)

    def poll(self) -> bool:
        """Reload if the file changed since the last poll. True when a new snapshot was swapped in."""
        signature = _signature(self.path)
        if signature is None or signature == self._seen:
            return False
        self._seen = signature
        try:
            snapshot = self._loader(self.path)
        except ConfigError as exc:
            self.store.reject(exc)
            log.error(
                "config reload rejected, keeping generation %d: %s", self.store.generation, exc
            )
            return False
        self.store.swap(snapshot)
        log.info("config reloaded from %s (generation %d)", self.path, self.store.generation)
        return True

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.poll()
