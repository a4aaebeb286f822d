"""A follower worker process of `zt run --workers N` (`python -m zt.node.worker`, started by the
leader, zt/node/workers.py).

It serves the pods the leader names over the control channel with its own listeners (joining
each (pod, port) SO_REUSEPORT group; only the leader's sockets are enrolled in capture), its own
HBONE pools, certificate manager (same CA directory; in fleet mode its own requests to the
signer), snapshot store + file watcher (the mesh file, or in fleet mode the leader's mesh cache;
policy changes revoke its own live connections) and metrics, written into the leader's
multiprocess directory (zt/telemetry/metrics.py) as it counts; values computed at scrape time
(live connections, revoked, dropped log records) are published there every PUBLISH_EVERY seconds
and once more at exit. It exits when its leader goes: control channel EOF, or PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import uvloop

from zt.capture import Capture
from zt.config import FileWatcher
from zt.errors import UsageError, ZtError
from zt.node.control import MAX_LINE, Channel
from zt.node.core import NodeCore
from zt.node.options import NodeOptions
from zt.node.reconcile import LatestOnly, same_listeners
from zt.node.services import NodeServices
from zt.node.sources import open_certs, open_follower_config
from zt.proxy import ktls, zerocopy
from zt.state import Snapshot
from zt.telemetry import logsetup
from zt.telemetry.logsetup import configure
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node.worker")

PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
PUBLISH_EVERY = 1.0  # seconds: how stale a scrape's view of a follower's collectors may be


class FollowerMisconfigured(UsageError):
    reason = "follower_misconfigured"


class Follower:
    def __init__(
        self, options: NodeOptions, worker: int, channel: Channel, registry: Registry
    ) -> None:
        self.options = options
        self.worker = worker
        self.channel = channel
        self.registry = registry  # Registry.follower(): the leader's directory
        self.core = NodeCore(options, registry, worker=worker, who=f"worker {worker}")
        self.pods = self.core.pods
        self._wanted: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.services: NodeServices | None = None
        self.watcher: FileWatcher | None = None
        self._resync = LatestOnly(self._reconverge)  # own swaps: one pass at a time, newest

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            await self.channel.send({"op": "hello", "worker": self.worker, "pid": os.getpid()})
            serving = asyncio.ensure_future(self.channel.serve(self._handle))
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if serving.done() and serving.exception() is None:
                log.info("worker %d: leader went away (control channel closed)", self.worker)
            serving.cancel()
            stopping.cancel()
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        opts = self.options
        if opts.pin_dir is None:
            raise FollowerMisconfigured("pin_dir: got None, expected the leader's pin directory")
        feed = open_follower_config(opts)
        store = feed.store
        certs = await open_certs(opts, self.registry, follower=True)
        capture = await asyncio.to_thread(Capture.follow, opts.pin_dir)
        if capture.mode != opts.capture:
            capture.close(detach=False)
            raise FollowerMisconfigured(
                f"capture: got {capture.mode!r} pinned under {opts.pin_dir}, expected {opts.capture!r}"
            )
        self.services = self.core.open(store, certs.manager, capture)
        self.watcher = feed.watcher
        store.subscribe(self._on_swap)
        self.core.run_in_background(
            *feed.runners(), *certs.runners, self._resync.run, self.core.renewal, self._publish
        )

    # -- the leader's requests --------------------------------------------------------------
    async def _handle(self, msg: dict[str, object]) -> dict[str, object]:
        op = msg.get("op")
        if op == "ping":
            return {}
        if op == "sync":
            pods = msg.get("pods")
            if not isinstance(pods, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in pods.items()
            ):
                raise FollowerMisconfigured(f"pods: got {pods!r}, expected {{uid: netns}}")
            return await self.sync(dict(pods))
        if op == "logging":  # the leader's levels, all of them (reset first)
            logsetup.set_levels(str(msg.get("level", "")), reset=True)
            return {}
        raise FollowerMisconfigured(f"op: got {op!r}, expected ping, sync or logging")

    async def sync(self, wanted: dict[str, str]) -> dict[str, object]:
        """Serve exactly `wanted` (uid -> netns); answer once every listener is open."""
        async with self._lock:
            self._wanted = wanted
            if self.watcher is not None:
                # at least as fresh as the leader's: it loaded the file once it settled
                self.watcher.poll(force=True)
            failed = await self._converge()
        return {"serving": sorted(self.pods), "failed": failed}

    async def _converge(self) -> dict[str, str]:
        services = self.services
        assert services is not None
        snapshot = services.store.current
        leaving = []
        for uid, pod in self.pods.items():
            netns, workload = self._wanted.get(uid), snapshot.by_uid.get(uid)
            if netns is None or netns != pod.netns:
                leaving.append(pod)  # the leader decides removals (after its grace period)
            elif workload is None:
                continue  # missing from our snapshot only: keep serving what the leader wants
            elif not same_listeners((pod.workload, pod.netns), (workload, netns)):
                leaving.append(pod)  # new identity or IPs: new listeners (restarted below)
            else:
                pod.workload = workload  # the rest is read per connection: swap it in place
        for pod in leaving:
            del self.pods[pod.uid]
        services.store.refresh()
        await self.core.stop_pods(leaving, unenroll=False)
        failed: dict[str, str] = {}
        for uid, netns in self._wanted.items():
            workload = snapshot.by_uid.get(uid)
            if uid in self.pods:
                continue
            if workload is None:
                failed[uid] = f"uid {uid!r} is not in worker {self.worker}'s config"
                continue
            try:
                await self.core.start_pod(workload, netns, unenroll_failed=False)
            except (ZtError, OSError) as exc:
                failed[uid] = str(exc)
                log.error("worker %d: pod %s not served: %s", self.worker, uid, exc)
        return failed

    def _on_swap(self, old: Snapshot, new: Snapshot) -> None:
        self.core.revoke(new)
        self._resync.request()
        self.core.run_in_background(self._tell_leader)

    async def _tell_leader(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.channel.send({"op": "config_changed"})

    async def _reconverge(self) -> float | None:
        async with self._lock:
            await self._converge()
        return None

    async def _publish(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            try:
                self.registry.publish()
            except Exception:  # a collector's bug: logged, and the next round tries again
                log.exception("worker %d: metrics not published", self.worker)

    async def _shutdown(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(sig)
        await self.core.shutdown(detach=False)
        self.channel.close()
        # the final figures (revoked connections...) stay in the node's; the files themselves
        # stay open until exit (a late callback may still count)
        self.registry.publish()
        log.info("worker %d stopped", self.worker)


class _WorkerTag(logging.Filter):
    """`[worker i] ` before a follower's own log lines (they share the leader's log); access
    records stay as they are (one parseable record, as the leader writes them)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.prefix = f"[worker {worker}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "zt.access" and not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def die_with(leader: int) -> None:
    """PR_SET_PDEATHSIG: SIGTERM (a drain) when the leader's thread that started us exits. The
    leader may have died before prctl ran: then our parent is no longer it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != leader:
        raise SystemExit(f"worker: leader {leader} is gone")


async def _main(options: NodeOptions, worker: int, fd: int, registry: Registry) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
    await Follower(options, worker, Channel(reader, writer), registry).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.node.worker")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--leader", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--options", required=True)
    args = parser.parse_args(argv)
    die_with(args.leader)
    options = NodeOptions.from_follower_json(args.options)
    configure(options.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(args.worker))
    try:
        ktls.configure(options.ktls)  # the leader's setting, for this process's connections
        zerocopy.configure(options.splice)
        # before anything counts: every series this process creates goes into the shared files
        registry = Registry.follower(args.metrics_dir)
        uvloop.run(_main(options, args.worker, args.control_fd, registry))
    except ZtError as exc:
        log.error("worker %d failed: %s", args.worker, exc)
        return exc.exit_code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
