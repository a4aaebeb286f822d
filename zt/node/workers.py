"""The leader's side of `zt run --workers N`: start N-1 follower worker processes, keep them
serving the leader's pods, restart the ones that die, drain them.

Why: "Several worker processes per node sharing the listeners (SO_REUSEPORT groups,
with the BPF sk_lookup / sockmap choosing the group), each with its own pool". Every worker opens
its own 15001/15006/15008 listeners per pod with SO_REUSEPORT, so each (pod, port) is one group.
Only the leader's sockets are in the sockmap: when sk_lookup assigns a socket of a reuseport group
(flags 0, i.e. without BPF_SK_LOOKUP_F_NO_REUSEPORT) the kernel then selects inside the group by
the 4-tuple hash (inet_lookup_run_sk_lookup -> inet_lookup_reuseport, Linux 5.9+), and the
connect-mode outbound path (connect4 rewrite to <pod ip>:15001) is an ordinary reuseport lookup.

A follower is `python -m zt.node.worker` (fork+exec from the loop thread, never a fork of the
running event loop), with one end of a socketpair as its control channel (zt/node/control.py).

Metrics: every worker writes its values into the leader's multiprocess directory
(`--metrics-dir`, zt/telemetry/metrics.py), which the leader's /metrics reads; a follower that
died is retired there (its gauges leave the sums, its counters stay: node counters never go back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from zt.errors import ZtError
from zt.node.control import MAX_LINE, Channel, WorkerChannelError
from zt.node.options import NodeOptions
from zt.telemetry.metrics import MetricsModeError, Registry

log = logging.getLogger("zt.node.workers")

HELLO_TIMEOUT = 60.0  # a follower's start: imports, config, CA, capture maps
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
STABLE_AFTER = 60.0  # a follower that lived this long restarts without back-off
# A hung follower keeps receiving its share of each reuseport group's connections: ping it, and
# kill it (it is restarted) when it does not answer. Generous: this box runs emulated VMs too.
HEARTBEAT_EVERY, HEARTBEAT_TIMEOUT = 2.0, 10.0
LEVELS_TIMEOUT = 5.0  # a follower setting its log levels: nothing to wait for but its loop


@dataclass
class Follower:
    index: int
    proc: subprocess.Popen[bytes]
    channel: Channel
    serving: frozenset[str] = frozenset()
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerSupervisor:
    """Followers 1..N-1 of this node. `desired()` is the leader's current {uid: netns}; `changed()`
    is called whenever what the followers serve may have changed (readiness)."""

    def __init__(
        self,
        options: NodeOptions,
        registry: Registry,
        desired: Callable[[], dict[str, str]],
        changed: Callable[[], None],
        config_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.options = options
        self.desired = desired
        self.changed = changed
        self.config_changed = config_changed  # a follower saw the mesh file change first
        self.followers: dict[int, Follower] = {}
        if registry.directory is None:  # followers would count where no scrape reads
            raise MetricsModeError(
                "registry: got a private one, expected Registry.leader() (followers write into "
                "its multiprocess directory)"
            )
        self.registry = registry
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_lock = asyncio.Lock()
        self._stopping = False
        self._restarts = registry.counter(
            "zt_worker_restarts_total", "Follower worker processes restarted after they died"
        )
        registry.add_collector(self._gauges)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # every follower not yet reaped
        self.restarts = 0
        self.levels = ""  # the leader's log levels once /logging changed them (level_directive)

    def _gauges(self) -> list[tuple[str, str, str, float]]:
        live = float(1 + len(self.followers))
        return [("zt_workers", "Worker processes serving (leader included)", "gauge", live)]

    @property
    def count(self) -> int:
        return self.options.workers - 1

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._supervise(i)) for i in range(1, self.count + 1)]

    def all_serving(self) -> bool:
        """Every follower is up and serves exactly the leader's pods."""
        want = frozenset(self.desired())
        return len(self.followers) == self.count and all(
            f.serving == want for f in self.followers.values()
        )

    async def _supervise(self, index: int) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            follower: Follower | None = None
            try:
                follower = await self._spawn(index)
                await self._run(follower)
            except (ZtError, OSError) as exc:
                log.error("worker %d: %s", index, exc)
            finally:
                if follower is not None:
                    await self._bury(follower)
            if self._stopping:
                return
            lived = time.monotonic() - follower.started if follower else 0.0
            backoff = BACKOFF_FIRST if lived > STABLE_AFTER else min(backoff * 2, BACKOFF_MAX)
            self.restarts += 1
            self._restarts.inc()
            log.warning("worker %d died; restarting it in %.1f s", index, backoff)
            await asyncio.sleep(backoff)

    async def _spawn(self, index: int) -> Follower:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [
                sys.executable, "-m", "zt.node.worker", "--worker", str(index),
                "--leader", str(os.getpid()), "--control-fd", str(theirs.fileno()),
                "--metrics-dir", str(self.registry.directory),
                "--options", self.options.follower_json(),
            ]  # fmt: skip
            # From the loop thread (PR_SET_PDEATHSIG follows the thread that forked), into our
            # process group (a signal to the node's group reaches every worker).
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            self._procs[proc.pid] = proc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the follower's copy alone: its death is our EOF
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_LINE)
        follower = Follower(index, proc, Channel(reader, writer))
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await follower.channel.receive()
        except TimeoutError:
            hello = None
        except BaseException:
            await self._bury(follower)
            raise
        if hello is None or hello.get("op") != "hello":
            await self._bury(follower)
            raise WorkerChannelError(f"pid {proc.pid} did not start: got {hello!r}, expected hello")
        log.info("worker %d started (pid %d)", index, proc.pid)
        return follower

    async def _run(self, follower: Follower) -> None:
        """Serve the leader's pods, then wait for the follower to go (EOF)."""
        dispatch = asyncio.ensure_future(follower.channel.dispatch(self._event))
        heartbeat = asyncio.ensure_future(self._heartbeat(follower))
        try:
            async with self._sync_lock:  # in order with sync(): the newest pod set wins
                self.followers[follower.index] = follower
                if self.levels:  # a restarted follower logs as the leader was told to
                    await follower.channel.request("logging", LEVELS_TIMEOUT, level=self.levels)
                failed = await self._sync_one(follower, self.desired())
            for uid, error in failed.items():
                log.error("worker %d: pod %s not served: %s", follower.index, uid, error)
            self.changed()
            await dispatch
        finally:
            dispatch.cancel()
            heartbeat.cancel()
            self.followers.pop(follower.index, None)
            self.changed()

    async def _heartbeat(self, follower: Follower) -> None:
        while not self._stopping:  # a draining follower stops answering; stop() handles it
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await follower.channel.request("ping", HEARTBEAT_TIMEOUT)
            except WorkerChannelError as exc:
                if self._stopping:
                    return
                log.error("worker %d (pid %d) hung (%s): SIGKILL", follower.index, follower.pid,
                          exc)  # fmt: skip
                _signal(follower.proc, signal.SIGKILL)  # its EOF ends _run: restarted
                return

    def _event(self, msg: dict[str, object]) -> None:
        if msg.get("op") == "config_changed":
            self.config_changed()

    async def _bury(self, follower: Follower) -> None:
        """Make sure the process is gone and reaped (it is exiting, or hung: SIGKILL). When
        stopping, stop() signals and reaps every process itself."""
        follower.channel.close()
        proc = follower.proc
        if proc.poll() is None and not self._stopping:
            try:
                await asyncio.to_thread(proc.wait, 2.0)  # EOF came first: it is exiting
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)  # alive but its channel is gone: hung
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(proc.wait, 10.0)
        if proc.poll() is not None:
            self._procs.pop(proc.pid, None)
            try:
                self.registry.retire(proc.pid)  # gone for good: its live gauges leave the sums
            except (OSError, ValueError) as exc:  # its counter file stays, still read: no loss
                log.error("worker %d (pid %d): metrics not retired: %s", follower.index,
                          proc.pid, exc)  # fmt: skip
        log.info("worker %d (pid %d) exit status %s", follower.index, proc.pid, proc.returncode)

    # -- pods -----------------------------------------------------------------------------
    async def sync(self) -> dict[int, dict[str, str]]:
        """Tell every follower the leader's pods; return what failed, by worker. Followers that
        do not answer are killed (their supervisor restarts them and syncs them again)."""
        async with self._sync_lock:
            wanted = self.desired()
            followers = list(self.followers.values())
            results = await asyncio.gather(
                *(self._sync_one(f, wanted) for f in followers), return_exceptions=True
            )
        failed: dict[int, dict[str, str]] = {}
        for follower, result in zip(followers, results, strict=True):
            if isinstance(result, BaseException):
                if follower.proc.poll() is not None:  # it died: its restart syncs it again
                    log.error("worker %d died during a sync: %s", follower.index, result)
                    continue
                log.error("worker %d: sync failed: %s; killing it", follower.index, result)
                _signal(follower.proc, signal.SIGKILL)
                failed[follower.index] = dict.fromkeys(wanted, str(result))
            elif result:
                failed[follower.index] = result
        self.changed()
        return failed

    async def _sync_one(self, follower: Follower, wanted: dict[str, str]) -> dict[str, str]:
        # A removed pod drains for up to drain_deadline before the follower answers.
        answer = await follower.channel.request(
            "sync", self.options.drain_deadline + 30.0, pods=wanted
        )
        serving, failed = answer.get("serving"), answer.get("failed")
        follower.serving = frozenset(serving) if isinstance(serving, list) else frozenset()
        return {str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {}

    # -- log levels ---------------------------------------------------------------------------
    async def set_levels(self, directive: str) -> None:
        """Every follower takes the leader's levels (`/logging` reaches the leader only): with
        workers, most connections and their access-log lines are the followers'."""
        self.levels = directive
        followers = list(self.followers.values())
        results = await asyncio.gather(
            *(f.channel.request("logging", LEVELS_TIMEOUT, level=directive) for f in followers),
            return_exceptions=True,
        )
        for follower, result in zip(followers, results, strict=True):
            if isinstance(result, BaseException):  # the heartbeat deals with a hung one
                log.error("worker %d: log levels not set: %s", follower.index, result)

    def info(self) -> list[dict[str, object]]:
        return [
            {"worker": f.index, "pid": f.pid, "serving": sorted(f.serving)}
            for f in sorted(self.followers.values(), key=lambda f: f.index)
        ]

    # -- drain --------------------------------------------------------------------------------
    async def stop(self, deadline: float) -> None:
        """SIGTERM every follower by PID (each drains), wait, SIGKILL what is left."""
        self._stopping = True
        procs = list(self._procs.values())
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, deadline + 5.0)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not drain in time: SIGKILL", proc.pid)
                _signal(proc, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for proc in list(self._procs.values()):  # one that was starting while we stopped
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10.0)
        self._procs.clear()


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal a follower by PID only while it is ours: Popen checks that it was not reaped yet
    (a reaped PID may already belong to another process)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
