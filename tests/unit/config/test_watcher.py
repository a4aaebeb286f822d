"""Reload on change with an atomic swap, only once the file settled; a bad edit (or any exception
while loading) keeps the last good snapshot, logs and counts it; the watcher loop never dies."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from zt.config import FileWatcher, SnapshotStore, load_file
from zt.config.watcher import file_signature
from zt.state import Snapshot

GOOD = "workloads:\n  - {uid: a, name: a, workloadIps: [10.0.0.1]}\n"
GOOD2 = GOOD + "  - {uid: b, name: b, workloadIps: [10.0.0.2]}\n"
BAD = "workloads:\n  - {uid: a, name: a, workloadIps: [10.0.0.999]}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, *, replace: bool = False) -> None:
    if replace:  # editors that write a new file and rename it over the old one
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)
    st = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


class Setup:
    def __init__(self, tmp_path: Path, loader: Callable[[Path], Snapshot] = load_file) -> None:
        self.path = tmp_path / "mesh.yaml"
        self.path.write_text(GOOD)
        self.store = SnapshotStore(load_file(self.path))
        self.clock = Clock()
        self.watcher = FileWatcher(self.path, self.store, loader, settle=1.0, clock=self.clock)

    def tick(self, seconds: float = 1.0) -> bool:
        """One poll `seconds` after the previous one (the daemon polls every second)."""
        self.clock.now += seconds
        return self.watcher.poll()

    def settle(self) -> bool:
        """Two polls: the first sees the change, the second finds it held still and loads."""
        first = self.tick()
        return self.tick() or first


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_no_change_no_reload(setup: Setup) -> None:
    assert setup.settle() is False
    assert setup.store.generation == 1
    assert setup.watcher.loads == 0


def test_an_edit_between_the_start_up_load_and_the_watcher_is_loaded(tmp_path: Path) -> None:
    """The daemon loads the file, then opens capture and serves pods before it starts watching:
    an edit made meanwhile must not be taken for the version it loaded."""
    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD)
    loaded = file_signature(path)  # taken before the start-up load, as the daemon does
    store = SnapshotStore(load_file(path))
    _write(path, GOOD2)  # the edit lands before the watcher exists
    clock = Clock()
    watcher = FileWatcher(path, store, load_file, settle=1.0, clock=clock, loaded=loaded)
    clock.now += 1.0
    watcher.poll()
    clock.now += 1.0
    watcher.poll()
    assert store.generation == 2
    assert len(store.current.workloads) == len(load_file(path).workloads)


@pytest.mark.parametrize("replace", [False, True], ids=["in-place", "rename-over"])
def test_a_change_is_loaded_once_it_held_still_for_two_polls(setup: Setup, replace: bool) -> None:
    seen: list[tuple[int, int]] = []
    setup.store.subscribe(lambda old, new: seen.append((len(old.workloads), len(new.workloads))))
    _write(setup.path, GOOD2, replace=replace)
    assert setup.tick() is False  # first sight of the change: not loaded yet
    assert setup.store.generation == 1 and setup.watcher.loads == 0
    assert setup.tick() is True
    assert [w.uid for w in setup.store.current.workloads] == ["a", "b"]
    assert setup.store.generation == 2
    assert seen == [(1, 2)]
    assert setup.settle() is False and setup.watcher.loads == 1  # the same file: not again


def test_a_file_rewritten_at_every_poll_is_never_loaded_half_written(setup: Setup) -> None:
    """A writer caught mid-way each poll: nothing is loaded until it stops, then the final text."""
    whole = GOOD2
    for cut in (10, len(whole) // 2, len(whole) - 5, 0):
        _write(setup.path, whole[:cut])
        assert setup.tick() is False
    _write(setup.path, whole)
    assert setup.tick() is False
    assert setup.watcher.loads == 0 and setup.store.reload_errors == 0
    assert setup.tick() is True
    assert len(setup.store.current.workloads) == 2


def test_ad_hoc_polls_do_not_shorten_the_settle_time(setup: Setup) -> None:
    _write(setup.path, GOOD2)
    for _ in range(5):  # e.g. a follower telling the leader to look now: 0.1 s apart
        assert setup.tick(0.1) is False
    assert setup.tick(0.6) is True


def test_force_loads_a_changed_file_at_once(setup: Setup) -> None:
    _write(setup.path, GOOD2)
    assert setup.watcher.poll(setup.clock.now, force=True) is True
    assert setup.watcher.poll(setup.clock.now, force=True) is False  # unchanged since


def test_bad_edit_keeps_last_good_logs_once_and_counts(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    before: Snapshot = setup.store.current
    _write(setup.path, BAD)
    with caplog.at_level(logging.ERROR, logger="zt.config"):
        assert setup.settle() is False
        assert setup.settle() is False  # still bad: not reloaded, not logged or counted again
    assert setup.store.current is before
    assert setup.store.reload_errors == 1
    assert setup.store.errors_by_reason == {"config_invalid": 1}
    assert setup.store.last_error is not None and not setup.store.last_reload_ok
    assert caplog.text.count("config reload rejected") == 1
    assert "workloads[0].workloadIps[0]" in caplog.text and "10.0.0.999" in caplog.text
    assert "refused (config_invalid)" in (setup.store.describe() or "")
    # fixing the file recovers and clears the error (the count stays)
    _write(setup.path, GOOD2)
    assert setup.settle() is True
    assert setup.store.last_error is None and setup.store.reload_errors == 1
    assert setup.store.last_reload_ok and setup.store.describe() is None
    status = setup.store.status()
    assert status["last_failure"] is not None and status["generation"] == 2


@pytest.mark.parametrize("text", ["", "# emptied by an editor\n"])
def test_an_emptied_file_is_refused_as_a_reload(setup: Setup, text: str) -> None:
    before = setup.store.current
    _write(setup.path, text)
    assert setup.settle() is False
    assert setup.store.current is before
    assert setup.store.errors_by_reason == {"config_empty": 1}


def test_deleted_file_keeps_snapshot_and_is_reported(setup: Setup) -> None:
    before = setup.store.current
    setup.path.unlink()
    assert setup.settle() is False
    assert setup.store.current is before
    assert setup.store.errors_by_reason == {"config_unreadable": 1}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RecursionError("maximum recursion depth exceeded"), "recursion"),
        (MemoryError(), "out_of_memory"),
        (OSError(5, "Input/output error"), "io"),
        (KeyError("a bug"), "internal"),
    ],
)
def test_any_exception_while_loading_keeps_the_snapshot_and_is_counted(
    tmp_path: Path, error: Exception, reason: str
) -> None:
    def loader(path: Path) -> Snapshot:
        raise error

    setup = Setup(tmp_path, loader)
    before = setup.store.current
    _write(setup.path, GOOD2)
    assert setup.settle() is False
    assert setup.store.current is before
    assert setup.store.errors_by_reason == {reason: 1}
    assert setup.store.last_error is not None
    assert setup.store.last_error.message.startswith(type(error).__name__)


def test_a_failing_subscriber_does_not_stop_the_swap_or_the_others(setup: Setup) -> None:
    seen: list[int] = []

    def broken(old: Snapshot, new: Snapshot) -> None:
        raise RuntimeError("subscriber bug")

    setup.store.subscribe(broken)
    setup.store.subscribe(lambda old, new: seen.append(len(new.workloads)))
    _write(setup.path, GOOD2)
    assert setup.settle() is True
    assert seen == [2]


def test_a_file_written_while_it_is_read_is_not_swapped_in(tmp_path: Path) -> None:
    """The load read one version while the writer produced another: discard, retry once settled."""
    holder: list[Setup] = []

    def racing_loader(path: Path) -> Snapshot:
        snap = load_file(path)
        if holder[0].watcher.loads == 1:  # the writer strikes while we read
            _write(path, GOOD)
        return snap

    setup = Setup(tmp_path, racing_loader)
    holder.append(setup)
    _write(setup.path, GOOD2)
    assert setup.settle() is False
    assert setup.store.generation == 1 and setup.store.reload_errors == 0
    assert setup.settle() is True  # the file the writer left, once it held still
    assert len(setup.store.current.workloads) == 1


def test_run_loop_survives_recursion_and_memory_errors_and_keeps_reloading(
    tmp_path: Path,
) -> None:
    """A loader that raises RecursionError, then MemoryError, then works: the run() task is alive
    throughout, counts both, and swaps in the good file."""
    errors: list[BaseException] = [RecursionError("deep"), MemoryError()]

    def loader(path: Path) -> Snapshot:
        if errors:
            raise errors.pop(0)
        return load_file(path)

    path = tmp_path / "mesh.yaml"
    path.write_text(GOOD)
    store = SnapshotStore(load_file(path))
    watcher = FileWatcher(path, store, loader, settle=0.02)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run(interval=0.01))
        try:
            for text in (GOOD2, GOOD, GOOD2):
                reloads = store.generation + store.reload_errors
                _write(path, text)
                for _ in range(500):
                    if store.generation + store.reload_errors > reloads:
                        break
                    await asyncio.sleep(0.01)
                assert not task.done()
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert store.errors_by_reason == {"recursion": 1, "out_of_memory": 1}
    assert len(store.current.workloads) == 2 and store.last_reload_ok


def test_served_workloads_missing_from_the_file_stay_in_the_view_until_released(
    setup: Setup,
) -> None:
    """A pod in its removal grace is served as the workload it was (its policies still apply);
    `loaded` shows the file as read; once the pod is released, refresh() drops it."""
    _write(setup.path, GOOD2)
    assert setup.settle() is True
    served = [setup.store.current.by_uid["b"]]
    setup.store.retain(lambda: served)
    _write(setup.path, GOOD)  # b vanished from the file
    assert setup.settle() is True
    assert "b" not in setup.store.loaded.by_uid
    assert setup.store.current.by_uid["b"] is served[0]
    served.clear()  # removed for good
    setup.store.refresh()
    assert "b" not in setup.store.current.by_uid


def test_a_retained_workload_yields_its_address_to_a_new_owner_in_the_file(setup: Setup) -> None:
    _write(setup.path, GOOD2)
    assert setup.settle() is True
    old_b = setup.store.current.by_uid["b"]
    setup.store.retain(lambda: [old_b])
    _write(setup.path, GOOD + "  - {uid: c, name: c, workloadIps: [10.0.0.2]}\n")
    assert setup.settle() is True
    assert "b" not in setup.store.current.by_uid  # 10.0.0.2 is c's now
    assert setup.store.current.by_uid["c"] is not None
