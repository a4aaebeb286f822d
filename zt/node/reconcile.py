"""Converging the pods a node serves on the newest mesh snapshot, without ever failing open.

`plan()` is pure: given the pods served now, the pods the newest snapshot wants and the time, it
says which to start, update in place, restart and stop. A served pod that vanished from the
snapshot is stopped only once it has been missing for `grace` seconds in a row (a file caught
half-written, an editor that truncates then writes, a flapping generator: the pod comes back and
is kept untouched). `LatestOnly` is the asyncio side: one pass at a time, always on the newest
snapshot; requests made while a pass runs collapse into one more pass.

Capture invariant (the caller's side, zt/node/daemon.py): an enrolled pod stays enrolled through
every transition except a removal for good. A pod whose listeners go away while enrolled has no
sockmap entry, so its traffic gets SK_DROP (fail closed); an unenrolled pod's traffic bypasses zt
(fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from zt.state import Workload

log = logging.getLogger("zt.node")

DEFAULT_GRACE = 5.0  # seconds a served pod may be missing from the snapshot before it is stopped
RETRY_AFTER = 5.0  # seconds before a pod that failed to start is tried again
FAILED_PASS_RETRY = 5.0  # seconds before a pass that raised is run again

Spec = tuple[Workload, str]  # (workload, netns)


def same_listeners(old: Spec, new: Spec) -> bool:
    """True when a pod's listeners, certificate and capture entry fit `new` as they fit `old`:
    same netns, identity, trust domain and IPs. Everything else a PodProxy reads from its
    workload at each connection, so such a change is applied in place (no listener gap)."""
    (ow, onetns), (nw, nnetns) = old, new
    return (onetns, ow.identity, ow.trust_domain, ow.ips) == (
        nnetns,
        nw.identity,
        nw.trust_domain,
        nw.ips,
    )


@dataclass(frozen=True)
class Plan:
    start: tuple[str, ...] = ()  # wanted, not served
    update: tuple[str, ...] = ()  # served; the new workload fits its listeners: swap it in
    restart: tuple[str, ...] = ()  # served (or held without listeners); needs new listeners
    stop: tuple[str, ...] = ()  # missing from the snapshot for the whole grace period
    wake_at: float | None = None  # the earliest grace deadline still running


class RemovalGrace:
    """Remembers since when each served pod has been missing from the desired set."""

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self._missing_since: dict[str, float] = {}

    def pending(self) -> dict[str, float]:
        """uid -> when its removal is due (for /config_dump)."""
        return {uid: since + self.grace for uid, since in sorted(self._missing_since.items())}

    def plan(
        self,
        served: Mapping[str, Spec | None],
        desired: Mapping[str, Spec],
        now: float,
    ) -> Plan:
        """`served`: uid -> what it serves, None for a pod held in capture without listeners."""
        start = tuple(uid for uid in desired if uid not in served)
        update, restart, stop, deadlines = [], [], [], []
        for uid, spec in served.items():
            want = desired.get(uid)
            if want is not None:
                self._missing_since.pop(uid, None)  # back in time: kept untouched
                if spec is None or not same_listeners(spec, want):
                    restart.append(uid)
                elif spec != want:
                    update.append(uid)
                continue
            since = self._missing_since.setdefault(uid, now)
            if now - since >= self.grace:
                stop.append(uid)
            else:
                deadlines.append(since + self.grace)
        for uid in list(self._missing_since):
            if uid not in served or uid in stop:
                del self._missing_since[uid]
        wake_at = min(deadlines) if deadlines else None
        return Plan(start, tuple(update), tuple(restart), tuple(stop), wake_at)


class LatestOnly:
    """Run `work` one pass at a time. `request()` during a pass makes exactly one more pass after
    it (however many requests came), so the last pass always starts after the newest request.
    `work` returns when it wants another pass unasked (a grace deadline, a retry), or None."""

    def __init__(
        self,
        work: Callable[[], Awaitable[float | None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._work = work
        self._clock = clock
        self._wake = asyncio.Event()
        self.passes = 0
        self.running = False

    def request(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        wake_at: float | None = None
        while True:
            timeout = None if wake_at is None else max(0.0, wake_at - self._clock())
            with contextlib.suppress(TimeoutError):  # a deadline came before any request
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()  # requests from here on are seen by the next pass
            self.running = True
            try:
                wake_at = await self._work()
            except Exception:  # a bug in one pass must not end convergence
                log.exception("pod sync pass failed; trying again in %g s", FAILED_PASS_RETRY)
                wake_at = self._clock() + FAILED_PASS_RETRY
            finally:
                self.running = False
                self.passes += 1
