"""Reload on change with an atomic swap; a bad edit keeps the last good snapshot, logs and counts."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from zt.config import FileWatcher, SnapshotStore, load_file
from zt.state import Snapshot

GOOD = "workloads:\n  - {uid: a, name: a, workloadIps: [10.0.0.1]}\n"
GOOD2 = GOOD + "  - {uid: b, name: b, workloadIps: [10.0.0.2]}\n"
BAD = "workloads:\n  - {uid: a, name: a, workloadIps: [10.0.0.999]}\n"


def _write(path: Path, text: str, *, replace: bool = False) -> None:
    if replace:  # editors that write a new file and rename it over the old one
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)
    st = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, SnapshotStore, FileWatcher]:
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD)
    store = SnapshotStore(load_file(path))
    return path, store, FileWatcher(path, store)


def test_no_change_no_reload(setup: tuple[Path, SnapshotStore, FileWatcher]) -> None:
    _, store, watcher = setup
    assert watcher.poll() is False
    assert store.generation == 1


@pytest.mark.parametrize("replace", [False, True], ids=["in-place", "rename-over"])
def test_change_swaps_snapshot_and_notifies(
    setup: tuple[Path, SnapshotStore, FileWatcher], replace: bool
) -> None:
    path, store, watcher = setup
    seen: list[tuple[int, int]] = []
    store.subscribe(lambda old, new: seen.append((len(old.workloads), len(new.workloads))))
    _write(path, GOOD2, replace=replace)
    assert watcher.poll() is True
    assert [w.uid for w in store.current.workloads] == ["a", "b"]
    assert store.generation == 2
    assert seen == [(1, 2)]


def test_bad_edit_keeps_last_good_logs_and_counts(
    setup: tuple[Path, SnapshotStore, FileWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    path, store, watcher = setup
    before: Snapshot = store.current
    _write(path, BAD)
    with caplog.at_level(logging.ERROR, logger="zt.config"):
        assert watcher.poll() is False
    assert store.current is before
    assert store.reload_errors == 1
    assert store.last_error is not None
    assert "workloads[0].workloadIps[0]" in caplog.text and "10.0.0.999" in caplog.text
    # fixing the file recovers and clears the error
    _write(path, GOOD2)
    assert watcher.poll() is True
    assert store.last_error is None and store.reload_errors == 1


def test_deleted_file_keeps_snapshot(setup: tuple[Path, SnapshotStore, FileWatcher]) -> None:
    path, store, watcher = setup
    before = store.current
    path.unlink()
    assert watcher.poll() is False
    assert store.current is before


def test_run_loop_picks_up_changes(setup: tuple[Path, SnapshotStore, FileWatcher]) -> None:
    path, store, watcher = setup

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run(interval=0.01))
        try:
            _write(path, GOOD2)
            for _ in range(200):
                if store.generation == 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert len(store.current.workloads) == 2
