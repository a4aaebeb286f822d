"""`zt run`: the composition root of a node. Config, certificates, capture, pods, endpoints.

Start-up order makes readiness honest: config loaded -> CA and certificate manager -> capture
opened (pinned) -> every local pod's certificate issued, listeners opened in its netns and enrolled
-> ready. SIGTERM (or POST /quitquitquit) drains: not ready, stop accepting, GOAWAY, let open
connections finish until the deadline, then abort what remains. Capture stays pinned and the pods
enrolled, so they fail closed until the next `zt run` re-registers their listeners.

Mesh file edits (zt/config/watcher.py, zt/node/reconcile.py): a change is loaded once it settled;
pod changes are applied one pass at a time on the newest snapshot; a pod missing from the file is
removed only after a grace period (served meanwhile as the workload it was); a pod that needs new
listeners stays enrolled while they are replaced (fail closed). A refused reload keeps the node
ready on the last good snapshot and says so in /healthz/ready, /config_dump and /metrics.

Fleet mode (`--etcd`, zt/node/sources.py): the same store, fed from etcd instead of the file
(zt/fleet/meshwatch.py), certificates asked of the signer through etcd; while etcd is unreachable
the node keeps serving its last snapshot, ready, and says so in the readiness body.

`--workers N`: this process is the leader and worker 0; zt/node/workers.py starts N-1 followers
(zt/node/worker.py) that open their own listeners in every pod this node serves, told over a
control channel; every worker writes its metrics into one multiprocess directory, which /metrics
reads (zt/telemetry/metrics.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator

from zt.capture import Capture
from zt.capture.netns import netns_path
from zt.config import SnapshotStore
from zt.config.dump import document
from zt.config.watcher import ReloadFailure
from zt.errors import NotFoundError, UsageError, ZtError
from zt.node.core import NodeCore
from zt.node.options import NodeOptions
from zt.node.pod import PodProxy, capture_name
from zt.node.podapi import PodAdd, PodList, PodRemove
from zt.node.podapi import serve as serve_pod_api
from zt.node.reconcile import RETRY_AFTER, LatestOnly, RemovalGrace, Spec
from zt.node.sdnotify import notify_stopping, notify_when_ready
from zt.node.services import NodeServices
from zt.node.sources import ConfigFeed, open_certs, open_config
from zt.node.workers import WorkerSupervisor
from zt.proxy import ktls, tlssocket, zerocopy
from zt.state import Protocol, Snapshot, Workload
from zt.telemetry import http, logsetup
from zt.telemetry.endpoints import (
    Admin,
    Readiness,
    build_info,
    certificate_dump,
    metrics_handler,
    readiness_handler,
)
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node")
NOTE_INTERVAL = 1.0  # seconds between refreshes of the config readiness detail


class PodNotLocal(UsageError):
    reason = "pod_not_local"


class WorkerPodFailed(ZtError):
    """A follower worker could not serve a pod the leader serves (pod API add is undone)."""

    http_status = 503
    reason = "worker_pod_failed"


__all__ = ["NodeDaemon", "NodeOptions", "PodNotLocal", "WorkerPodFailed"]


class NodeDaemon:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        # with worker processes: ready only when every worker serves every pod
        self.readiness = Readiness("config", "certificates", "capture", "workers")
        # with worker processes, a multiprocess directory every worker writes into (removed at
        # exit); switched before the first metric exists (zt/telemetry/metrics.py)
        self.registry = Registry.leader() if options.workers > 1 else Registry()
        self.core = NodeCore(options, self.registry, worker=0, who=f"node {options.node}")
        self.pods = self.core.pods
        self._api_pods: dict[str, str] = {}  # uid -> netns, pods added through the pod API
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._levels_task: asyncio.Future[None] | None = None
        self._pod_lock = asyncio.Lock()
        self.services: NodeServices | None = None
        self.workers: WorkerSupervisor | None = None
        self._feed: ConfigFeed | None = None  # the mesh file, or etcd (zt/node/sources.py)
        # Config-driven pod changes: one pass at a time on the newest snapshot (zt/node/reconcile.py)
        self._grace = RemovalGrace(options.pod_grace)
        self._sync = LatestOnly(self._reconcile)
        self._reload_errors = self.registry.counter(
            "zt_config_reload_errors_total", "Refused config reloads, by reason", ("reason",)
        )
        self._stopping: dict[str, asyncio.Future[None]] = {}  # uid -> done when drained
        self._held: dict[str, str] = {}  # uid -> netns: enrolled, listeners lost in a restart
        self._retry_at: dict[str, float] = {}  # uid -> when a failed start is tried again

    # -- start-up -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or /quitquitquit, then drain and return."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start()
            log.info("node %s ready: %d pods", self.options.node, len(self.pods))
            await self._stop.wait()
        finally:
            try:
                await self._shutdown()
            finally:
                self.registry.close()  # with workers: the multiprocess directory goes too

    async def _start(self) -> None:
        opts = self.options
        self._feed = feed = await open_config(opts, self.registry)
        store = feed.store
        self.readiness.set("config")
        await self._endpoints(store)
        certs = await open_certs(opts, self.registry)
        # --dns: port 53 of every enrolled pod goes to its DNS proxy on :15053 (zt/node/dns.py)
        open_capture = functools.partial(
            Capture.open, opts.capture, pin_dir=opts.pin_dir, dns=opts.dns
        )
        capture = await asyncio.to_thread(open_capture)
        self.services = self.core.open(store, certs.manager, capture)
        self._collectors()
        self.readiness.set("capture")
        self._hold_enrolled()
        await self._reconcile()
        self.readiness.set("certificates")
        store.subscribe(self._on_swap)
        store.on_reject(self._on_reject)
        self._start_workers()
        self.core.run_in_background(
            *feed.runners(), *certs.runners, self._sync.run, self.core.renewal, self._note_config
        )
        self._sync.request()  # a pass under the loop: it keeps the first pass's retries going
        self._servers.append(await serve_pod_api(opts.pod_socket, self._pod_api))
        # under systemd's Type=notify, READY=1 once readiness holds (after the pod API is up)
        self.core.run_in_background(lambda: notify_when_ready(self.readiness))

    def _hold_enrolled(self) -> None:
        """Pods the previous `zt run` left enrolled in the pinned capture are held: should their
        first start fail (in fleet mode: no certificate while etcd is down) they stay captured,
        their traffic dropped (fail closed), instead of being unenrolled (fail open)."""
        assert self.services is not None
        enrolled = {p.name: p.netns for p in self.services.capture.status().pods}
        for uid, (_, netns) in self._desired(self.services.store.loaded).items():
            with contextlib.suppress(ZtError):
                if enrolled.get(capture_name(uid)) == str(netns_path(netns)):
                    self._held[uid] = netns

    async def _note_config(self) -> None:
        """Readiness detail while the served config is not the newest (etcd unreachable, an
        object refused): the node stays ready on its last good snapshot, and says so."""
        while True:
            self.readiness.note("config", self._feed.describe() if self._feed else None)
            await asyncio.sleep(NOTE_INTERVAL)

    def _levels_changed(self) -> None:
        """/logging changed the leader's levels: its followers take the same (in call order on
        each control channel, so the newest levels win)."""
        if self.workers is not None:
            self._levels_task = asyncio.ensure_future(
                self.workers.set_levels(logsetup.level_directive())
            )

    async def _endpoints(self, store: SnapshotStore) -> None:
        opts = self.options
        admin = Admin(lambda: self.config_dump(store), self._stop.set, self._levels_changed)
        stats: dict[str, http.ServerStats] = {}
        for name, addr, handler in (
            ("metrics", opts.metrics, metrics_handler(self.registry)),
            ("readiness", opts.readiness, readiness_handler(self.readiness)),
            ("admin", opts.admin, admin),
        ):
            stats[name] = http.ServerStats()  # connection cap and deadlines: http.Limits
            server = await http.serve(str(addr.ip), addr.port, handler, stats=stats[name])
            self._servers.append(server)
        self.registry.add_collector(lambda: http.stats_samples(stats))

    def _start_workers(self) -> None:
        if self.options.workers == 1:
            self.readiness.set("workers")
            return
        self.workers = WorkerSupervisor(
            self.options,
            self.registry,
            desired=lambda: {uid: pod.netns for uid, pod in self.pods.items()},
            changed=lambda: self.readiness.set("workers", self._workers_ready()),
            config_changed=self._poll_config,
        )
        self.workers.start()

    def _poll_config(self) -> None:
        """A follower swapped in a new mesh file: reload it now if it settled (the swap syncs
        every worker); either way re-sync, so what each follower serves is known afresh."""
        if self._feed is not None:
            self._feed.poll()
        self._sync.request()

    def _workers_ready(self) -> bool:
        return self.workers is None or self.workers.all_serving()

    async def _sync_workers(self) -> dict[int, dict[str, str]]:
        """Followers serve the leader's pods; what failed, by worker (answered once they listen)."""
        return await self.workers.sync() if self.workers is not None else {}

    def _collectors(self) -> None:
        services = self.services
        assert services is not None

        def capture_counters() -> list[tuple[str, str, str, float]]:
            counters = services.capture.counters()
            return [
                (f"zt_capture_{name}_total", f"BPF capture verdicts: {name}", "counter", float(v))
                for name, v in sorted(counters.items())
            ]

        def node_gauges() -> list[tuple[str, str, str, float]]:
            return [
                ("zt_pods", "Pods served by this node", "gauge", float(len(self.pods))),
                ("zt_config_generation", "Config snapshots loaded", "gauge",
                 float(services.store.generation)),
                ("zt_config_last_reload_success", "1 when the newest mesh file is the one "
                 "served, 0 while it is refused (the last good snapshot is kept)", "gauge",
                 float(services.store.last_reload_ok)),
                ("zt_pods_pending_removal", "Served pods missing from the mesh file, within "
                 "their grace period", "gauge", float(len(self._grace.pending()))),
                ("zt_pods_held_captured", "Enrolled pods without listeners (their traffic is "
                 "dropped until they are served again)", "gauge", float(len(self._held))),
            ]  # fmt: skip

        self.registry.add_collector(capture_counters)
        self.registry.add_collector(node_gauges)
        self.registry.add_collector(ktls.samples)
        self.registry.add_collector(zerocopy.samples)

    # -- pods -----------------------------------------------------------------------------------
    def _desired(self, snapshot: Snapshot) -> dict[str, tuple[Workload, str]]:
        """uid -> (workload, netns) this node should serve: the config's local HBONE workloads
        with a netns, plus pods added through the pod API whose workload is still here."""
        desired = {
            w.uid: (w, w.netns)
            for w in snapshot.workloads_on(self.options.node)
            if w.netns and w.protocol is Protocol.HBONE
        }
        for uid, netns in self._api_pods.items():
            w = snapshot.by_uid.get(uid)
            if w is not None and w.node == self.options.node:
                desired.setdefault(uid, (w, netns))
        return desired

    async def _reconcile(self) -> float | None:
        """One pass toward the newest snapshot (LatestOnly runs one at a time). It acts only while
        the snapshot it planned on is the newest: after a swap it stops, and the next pass plans
        again. Returns when to pass again unasked (a grace deadline, a retry), or None."""
        assert self.services is not None
        store = self.services.store
        generation, now = store.generation, time.monotonic()
        desired = self._desired(store.loaded)  # the file as read: what it lacks is missing
        served: dict[str, Spec | None] = {u: (p.workload, p.netns) for u, p in self.pods.items()}
        served.update(dict.fromkeys(self._held))
        plan = self._grace.plan(served, desired, now)
        for uid in plan.update:  # same listeners, identity and IPs: nothing to reopen
            self.pods[uid].workload = desired[uid][0]
        due = [u for u in (*plan.restart, *plan.start) if self._retry_at.get(u, 0.0) <= now]
        steps = [
            *(functools.partial(self._retire, uid) for uid in plan.stop),
            *(
                functools.partial(self._restart, uid, desired[uid])
                for uid in plan.restart
                if uid in due
            ),
            *(
                functools.partial(self._serve_pod, uid, desired[uid])
                for uid in plan.start
                if uid in due
            ),
        ]
        for step in steps:
            if store.generation != generation:
                return time.monotonic()  # planned on a snapshot that is no longer the newest
            await step()
        for uid in [u for u in self._retry_at if u not in desired]:
            del self._retry_at[uid]
        await self._sync_workers()
        wakes = [t for t in (plan.wake_at, *self._retry_at.values()) if t is not None]
        return min(wakes, default=None)

    async def _serve_pod(self, uid: str, spec: Spec) -> None:
        try:
            await self.add_pod(*spec)
        except (ZtError, OSError) as exc:
            self._retry_at[uid] = time.monotonic() + RETRY_AFTER
            log.error("pod %s not served (trying again in %g s): %s", uid, RETRY_AFTER, exc)
        except Exception:  # a bug with one pod must not stop the pass for every pod after it
            self._retry_at[uid] = time.monotonic() + RETRY_AFTER
            log.exception("pod %s not served (trying again in %g s)", uid, RETRY_AFTER)
        else:
            self._retry_at.pop(uid, None)

    async def _restart(self, uid: str, spec: Spec) -> None:
        """New listeners for a served (or held) pod whose identity, IPs or netns changed. In the
        same netns the pod stays enrolled throughout: between the old listeners closing and the
        new ones registering its sockmap entries are missing, so its traffic is dropped (SK_DROP),
        never let past zt. A new netns is another sandbox: the old one is unenrolled."""
        netns = spec[1]
        async with self._pod_lock:
            old = self.pods.pop(uid, None)
        old_netns = old.netns if old is not None else self._held.get(uid)
        keep = old_netns == netns
        if old is not None:
            async with self._stopping_pod(uid):
                await old.stop(self.options.drain_deadline, unenroll=not keep)
        elif not keep and old_netns is not None:
            await self._unenroll(uid)
        self._held.pop(uid, None)
        if keep:
            self._held[uid] = netns  # until the new listeners are registered
        await self._serve_pod(uid, spec)
        if old is not None:
            self._forget_cert(old)

    async def _retire(self, uid: str) -> None:
        """Missing from the snapshot for the whole grace period: drain, then unenroll."""
        log.info("pod %s left the mesh config %g s ago or more: removing it", uid,
                 self._grace.grace)  # fmt: skip
        self._retry_at.pop(uid, None)
        with contextlib.suppress(NotFoundError):
            await self.remove_pod(uid, forget=False)
        assert self.services is not None
        self.services.store.refresh()  # no longer served: no longer retained in the view

    async def _unenroll(self, uid: str) -> None:
        assert self.services is not None
        try:
            await asyncio.to_thread(self.services.capture.unenroll, capture_name(uid))
        except (ZtError, OSError) as exc:
            log.error("pod %s: could not leave capture: %s", uid, exc)

    def _forget_cert(self, pod: PodProxy) -> None:
        assert self.services is not None
        if not any(p.identity == pod.identity for p in self.pods.values()):
            self.services.certs.forget(pod.identity)  # a workload that left: forget its cert

    async def add_pod(self, workload: Workload, netns: str) -> PodProxy:
        assert self.services is not None
        # A stop of the same uid still draining ends with an unenroll by name: starting the new
        # proxy before it would let that unenroll take the new pod out of capture (fail open).
        while (stopping := self._stopping.get(workload.uid)) is not None:
            await asyncio.shield(stopping)
        async with self._pod_lock:
            if workload.uid in self.pods:
                return self.pods[workload.uid]
            # a pod held in capture stays held (fail closed until a retry serves it)
            held = self._held.get(workload.uid) == netns
            pod = await self.core.start_pod(workload, netns, unenroll_failed=not held)
            self._held.pop(workload.uid, None)
            return pod

    async def remove_pod(self, uid: str, *, forget: bool = True) -> None:
        """Drain and stop a pod, then unenroll it; `forget` also drops a pod-API registration."""
        if forget:
            self._api_pods.pop(uid, None)
        async with self._pod_lock:
            pod = self.pods.pop(uid, None)
        if pod is None and uid in self._held:
            del self._held[uid]
            await self._unenroll(uid)
            return
        if pod is None:
            raise NotFoundError(f"pod {uid!r} is not served by node {self.options.node}")
        # the followers drain their sockets of the pod while the leader drains its own
        async with self._stopping_pod(uid):
            await asyncio.gather(pod.stop(self.options.drain_deadline, unenroll=True),
                                 self._sync_workers())  # fmt: skip
        self._forget_cert(pod)

    @contextlib.asynccontextmanager
    async def _stopping_pod(self, uid: str) -> AsyncIterator[None]:
        """While a pod's old proxy drains, a new proxy for the same uid waits (see add_pod)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stopping[uid] = done
        try:
            yield
        finally:
            if self._stopping.get(uid) is done:
                del self._stopping[uid]
            done.set_result(None)

    async def _pod_api(self, cmd: PodAdd | PodRemove | PodList) -> dict[str, object]:
        assert self.services is not None
        if isinstance(cmd, PodList):
            return {"pods": [self._pod_info(p) for p in self.pods.values()]}
        if isinstance(cmd, PodRemove):
            await self.remove_pod(cmd.uid)
            return {"removed": cmd.uid}
        workload = self.services.store.current.by_uid.get(cmd.uid)
        if workload is None:
            raise NotFoundError(f"uid: got {cmd.uid!r}, expected a workload of the mesh config")
        if workload.node != self.options.node:
            raise PodNotLocal(
                f"uid: {cmd.uid!r} runs on node {workload.node!r}, not {self.options.node!r}"
            )
        previous = self._api_pods.get(cmd.uid)
        self._api_pods[cmd.uid] = cmd.netns
        created = cmd.uid not in self.pods
        try:
            pod = await self.add_pod(workload, cmd.netns)
        except BaseException:
            self._api_pods.pop(cmd.uid, None)
            raise
        failed = {w: f[cmd.uid] for w, f in (await self._sync_workers()).items() if cmd.uid in f}
        if failed:  # answered only when every worker listens, or undone
            if created:  # never undo a pod served before this call (e.g. from the mesh file)
                await self.remove_pod(cmd.uid)
            elif previous is None:
                self._api_pods.pop(cmd.uid, None)
            else:
                self._api_pods[cmd.uid] = previous
            worker, error = next(iter(failed.items()))
            raise WorkerPodFailed(f"uid: {cmd.uid!r} not served by worker {worker}: {error}")
        return {"added": self._pod_info(pod)}

    @staticmethod
    def _pod_info(pod: PodProxy) -> dict[str, object]:
        return {
            "uid": pod.uid,
            "netns": pod.netns,
            "ips": [str(ip) for ip in pod.workload.ips],
            "identity": str(pod.identity),
            "connections": pod.connections,
        }

    def _on_swap(self, old: Snapshot, new: Snapshot) -> None:
        self.core.revoke(new)
        self.readiness.note("config", self._feed.describe() if self._feed else None)
        self._sync.request()  # however many swaps come, one pass at a time, on the newest

    def _on_reject(self, failure: ReloadFailure) -> None:
        """A refused reload keeps the node ready: it goes on serving the last good snapshot (as
        ztunnel and Envoy keep their last good config), and flipping readiness would turn one bad
        edit into every node leaving service at once. The refusal shows in the readiness body,
        /config_dump and zt_config_last_reload_success / zt_config_reload_errors_total."""
        self._reload_errors.inc(labels={"reason": failure.reason})
        if self._feed is not None:
            self.readiness.note("config", self._feed.describe())

    def config_dump(self, store: SnapshotStore) -> dict[str, object]:
        """ztunnel's /config_dump keys first: the workloads, services and policies served (the
        mesh file plus pods in their removal grace), `certificates`, `version`; then this node's
        own state, each under its key."""
        services = self.services
        return {
            **document(store.current),
            "certificates": certificate_dump(services.certs.held()) if services else [],
            "version": build_info(),
            "tls": tlssocket.dump(),
            "node": self.options.node,
            "ready": self.readiness.ready,
            "config_source": self._feed.status() if self._feed else None,
            "config": {"path": str(self.options.config) if self.options.config else None,
                       **store.status()},
            "pods_pending_removal": {uid: round(max(0.0, at - time.monotonic()), 3)
                                     for uid, at in self._grace.pending().items()},
            "pods_held_in_capture": sorted(self._held),
            "pods": [self._pod_info(p) for p in self.pods.values()],
            "capture": services.capture.status().to_dict() if services else None,
            "dns": services.dns.dump() if services and services.dns else {"enabled": False},
            # deliveries to apps come from the caller's IP (zt/capture/origsrc.py)
            "original_source": services.original_source if services else None,
            "workers": self.workers.info() if self.workers else [],
        }  # fmt: skip

    # -- shutdown -------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(sig)
        for condition in ("config", "certificates", "capture"):
            self.readiness.set(condition, False)
        notify_stopping()
        log.info("node %s draining (deadline %g s)", self.options.node, self.options.drain_deadline)
        followers = [self.workers.stop(self.options.drain_deadline)] if self.workers else []
        # every follower drains too, and none is left behind. Pinned: leave capture in place
        # (fail closed until the next zt). Unpinned: detach.
        await self.core.shutdown(detach=self.options.pin_dir is None, also=followers)
        for server in self._servers:
            server.close()
        log.info("node %s stopped", self.options.node)
