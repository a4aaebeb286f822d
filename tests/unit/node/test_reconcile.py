"""Converging on the newest snapshot: the removal grace (fake clock) and one pass at a time."""

from __future__ import annotations

import asyncio

import pytest

from zt.config import load_document
from zt.node.reconcile import LatestOnly, Plan, RemovalGrace, Spec, same_listeners
from zt.state import Snapshot


def _snapshot(*uids: str, **changes: dict[str, object]) -> Snapshot:
    workloads = [
        {
            "uid": uid,
            "name": uid,
            "workloadIps": [f"10.0.0.{i + 1}"],
            "protocol": "HBONE",
            "node": "n1",
            "netns": f"ns-{uid}",
            **changes.get(uid, {}),
        }
        for i, uid in enumerate(uids)
    ]
    return load_document({"workloads": workloads}, "t")


def _desired(snapshot: Snapshot) -> dict[str, Spec]:
    return {w.uid: (w, w.netns or "") for w in snapshot.workloads}


def test_a_new_pod_starts_and_an_unchanged_one_is_left_alone() -> None:
    grace = RemovalGrace(5.0)
    both = _desired(_snapshot("a", "b"))
    assert grace.plan({}, both, 0.0) == Plan(start=("a", "b"))
    assert grace.plan(both, both, 1.0) == Plan()


def test_a_missing_pod_is_stopped_only_after_the_grace_period() -> None:
    grace = RemovalGrace(5.0)
    served = _desired(_snapshot("a", "b"))
    only_a = _desired(_snapshot("a"))
    assert grace.plan(served, only_a, 100.0) == Plan(wake_at=105.0)
    assert grace.pending() == {"b": 105.0}
    assert grace.plan(served, only_a, 104.9) == Plan(wake_at=105.0)  # since 100, not 104.9
    assert grace.plan(served, only_a, 105.0) == Plan(stop=("b",))
    assert grace.pending() == {}


def test_a_pod_back_within_the_grace_period_is_kept_untouched_and_its_clock_reset() -> None:
    grace = RemovalGrace(5.0)
    served = _desired(_snapshot("a", "b"))
    assert grace.plan(served, {}, 0.0).wake_at == 5.0  # an empty snapshot: nothing stopped yet
    assert grace.plan(served, served, 3.0) == Plan()  # the whole file is back
    # missing again later: a fresh grace period, not the remains of the first
    assert grace.plan(served, {}, 4.0) == Plan(wake_at=9.0)
    assert grace.plan(served, {}, 8.9).stop == ()
    assert set(grace.plan(served, {}, 9.0).stop) == {"a", "b"}


def test_grace_zero_stops_at_once() -> None:
    served = _desired(_snapshot("a"))
    assert RemovalGrace(0.0).plan(served, {}, 0.0) == Plan(stop=("a",))


def test_a_change_that_keeps_identity_ips_and_netns_is_an_in_place_update() -> None:
    grace = RemovalGrace(5.0)
    before = _desired(_snapshot("a"))
    after = _desired(_snapshot("a", a={"status": "Unhealthy"}))
    assert same_listeners(before["a"], after["a"])
    assert grace.plan(before, after, 0.0) == Plan(update=("a",))


@pytest.mark.parametrize(
    "change",
    [
        {"serviceAccount": "other"},
        {"workloadIps": ["10.9.9.9"]},
        {"netns": "ns-elsewhere"},
        {"trustDomain": "td.example"},
    ],
    ids=["identity", "ips", "netns", "trust-domain"],
)
def test_a_change_of_identity_ips_or_netns_is_a_restart(change: dict[str, object]) -> None:
    before = _desired(_snapshot("a"))
    after = _desired(_snapshot("a", a=change))
    assert not same_listeners(before["a"], after["a"])
    assert RemovalGrace(5.0).plan(before, after, 0.0) == Plan(restart=("a",))


def test_a_pod_held_in_capture_without_listeners_is_restarted_or_stopped_after_grace() -> None:
    grace = RemovalGrace(5.0)
    held: dict[str, Spec | None] = {"a": None}
    assert grace.plan(held, _desired(_snapshot("a")), 0.0) == Plan(restart=("a",))
    assert grace.plan(held, {}, 1.0) == Plan(wake_at=6.0)
    assert grace.plan(held, {}, 6.0) == Plan(stop=("a",))


# -- one pass at a time, on the newest --------------------------------------------------------
class Node:
    """A model of the daemon's pass: reads the newest 'snapshot' (a generation number), acts
    over several awaits (pod starts and stops), records what it saw."""

    def __init__(self) -> None:
        self.generation = 0
        self.seen: list[int] = []
        self.active = 0
        self.overlapped = False
        self.release = asyncio.Event()

    async def work(self) -> float | None:
        self.active += 1
        self.overlapped |= self.active > 1
        try:
            self.seen.append(self.generation)
            await self.release.wait()  # a slow pass: pods draining
            return None
        finally:
            self.active -= 1


def test_requests_during_a_pass_collapse_into_one_more_pass_on_the_newest() -> None:
    async def scenario() -> Node:
        node = Node()
        runner = LatestOnly(node.work)
        task = asyncio.create_task(runner.run())
        try:
            node.generation = 1
            runner.request()
            while not node.seen:
                await asyncio.sleep(0)
            for generation in range(2, 7):  # five swaps while the first pass runs
                node.generation = generation
                runner.request()
                await asyncio.sleep(0)
            node.release.set()
            while runner.passes < 2 or runner.running:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)  # no third pass follows
        finally:
            task.cancel()
        return node

    node = asyncio.run(scenario())
    assert node.seen == [1, 6]
    assert not node.overlapped


def test_a_pass_that_raises_does_not_end_the_loop() -> None:
    calls: list[int] = []

    async def work() -> float | None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return None

    async def scenario() -> None:
        runner = LatestOnly(work)
        task = asyncio.create_task(runner.run())
        try:
            runner.request()
            while runner.passes < 1:
                await asyncio.sleep(0.001)
            runner.request()
            while runner.passes < 2:
                await asyncio.sleep(0.001)
            assert not task.done()
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert calls == [0, 1]


def test_a_pass_returning_a_deadline_runs_again_then_unasked() -> None:
    clock = [0.0]
    passes: list[float] = []

    async def work() -> float | None:
        passes.append(clock[0])
        return 0.05 if len(passes) == 1 else None  # the grace deadline of a missing pod

    async def scenario() -> None:
        runner = LatestOnly(work, clock=lambda: clock[0])
        task = asyncio.create_task(runner.run())
        try:
            runner.request()
            while runner.passes < 1:
                await asyncio.sleep(0.001)
            clock[0] = 0.05  # time reaches the deadline: no request needed
            for _ in range(2000):
                if runner.passes >= 2:
                    break
                await asyncio.sleep(0.001)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert passes == [0.0, 0.05]


def test_flapping_snapshots_converge_on_the_newest_with_grace() -> None:
    """The measured failure: after a 1 s flap (whole, half, empty, whole), concurrent syncs on
    stale snapshots left pods unserved or uncaptured. Here: one pass at a time, the newest
    snapshot each time, and nothing stopped since every pod came back within its grace."""
    whole = _desired(_snapshot("a", "b", "c"))
    half = _desired(_snapshot("a"))
    timeline = [(0.0, whole), (0.3, half), (0.6, {}), (0.9, whole)]
    clock = [0.0]
    newest: list[dict[str, Spec]] = [{}]
    served: dict[str, Spec | None] = {}
    grace = RemovalGrace(5.0)
    stopped: list[str] = []

    async def work() -> float | None:
        plan = grace.plan(served, newest[0], clock[0])
        for uid in plan.stop:
            await asyncio.sleep(0)  # draining
            stopped.append(uid)
            del served[uid]
        for uid in plan.start:
            await asyncio.sleep(0)  # listeners opening
            served[uid] = newest[0][uid]
        return plan.wake_at

    async def scenario() -> None:
        runner = LatestOnly(work, clock=lambda: clock[0])
        task = asyncio.create_task(runner.run())
        try:
            for at, desired in timeline:
                clock[0], newest[0] = at, desired
                runner.request()
                await asyncio.sleep(0.01)
            while runner.running:
                await asyncio.sleep(0.001)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert stopped == []
    assert served == whole
    assert grace.pending() == {}
