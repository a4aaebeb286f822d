"""`zt run`: the composition root of a node. Config, certificates, capture, pods, endpoints.

Start-up order makes readiness honest: config loaded -> CA and certificate manager -> capture
opened (pinned) -> every local pod's certificate issued, listeners opened in its netns and enrolled
-> ready. SIGTERM (or POST /quitquitquit) drains: not ready, stop accepting, GOAWAY, let open
connections finish until the deadline, then abort what remains. Capture stays pinned and the pods
enrolled, so they fail closed until the next `zt run` re-registers their listeners.

`--workers N`: this process is the leader and worker 0; zt/node/workers.py starts N-1 followers
(zt/node/worker.py) that open their own listeners in every pod this node serves, told over a
control channel; /metrics sums every worker's registry (zt/node/metricsmerge.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from zt.capture import Capture
from zt.config import FileWatcher, SnapshotStore, load_file
from zt.config.dump import document
from zt.errors import NotFoundError, UsageError, ZtError
from zt.identity.ca import CertificateAuthority
from zt.identity.manager import CertificateManager
from zt.node import metricsmerge
from zt.node.options import NodeOptions
from zt.node.pod import PodProxy
from zt.node.podapi import PodAdd, PodList, PodRemove
from zt.node.podapi import serve as serve_pod_api
from zt.node.services import NodeServices, renew_loop
from zt.node.workers import WorkerSupervisor
from zt.state import Protocol, Snapshot, Workload
from zt.telemetry import http
from zt.telemetry.connections import ConnectionTelemetry
from zt.telemetry.endpoints import Admin, Readiness, metrics_handler, readiness_handler
from zt.telemetry.http import Request, Response
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node")


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
        # issue 8 (worker processes): ready only when every worker serves every pod
        self.readiness = Readiness("config", "certificates", "capture", "workers")
        self.registry = Registry()
        self.pods: dict[str, PodProxy] = {}
        self._api_pods: dict[str, str] = {}  # uid -> netns, pods added through the pod API
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._background: list[asyncio.Task[None]] = []
        self._pod_lock = asyncio.Lock()
        self.services: NodeServices | None = None
        self.workers: WorkerSupervisor | None = None
        self._watcher: FileWatcher | None = None

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
            await self._shutdown()

    async def _start(self) -> None:
        opts = self.options
        store = SnapshotStore(load_file(opts.config))
        self.readiness.set("config")
        await self._endpoints(store)
        ca = await asyncio.to_thread(
            CertificateAuthority.load_or_init, opts.ca_dir, opts.trust_domain
        )
        capture = await asyncio.to_thread(Capture.open, opts.capture, pin_dir=opts.pin_dir)
        self.services = NodeServices(
            node=opts.node,
            store=store,
            certs=CertificateManager(ca),
            capture=capture,
            registry=self.registry,
            telemetry=ConnectionTelemetry(self.registry, log_format=opts.log_format),
            socks5=opts.socks5,
            reuse_port=opts.workers > 1,
        )
        self._collectors()
        self.readiness.set("capture")
        await self._sync_pods(store.current)
        self.readiness.set("certificates")
        store.subscribe(self._on_swap)
        self._watcher = watcher = FileWatcher(opts.config, store)
        self._start_workers()
        self._background += [
            asyncio.ensure_future(watcher.run(opts.config_poll)),
            asyncio.ensure_future(renew_loop(self.services.certs, f"node {opts.node}")),
        ]
        self._servers.append(await serve_pod_api(opts.pod_socket, self._pod_api))

    async def _endpoints(self, store: SnapshotStore) -> None:
        opts = self.options
        admin = Admin(lambda: self.config_dump(store), self._stop.set)
        for addr, handler in (
            (opts.metrics, self._metrics),
            (opts.readiness, readiness_handler(self.readiness)),
            (opts.admin, admin),
        ):
            self._servers.append(await http.serve(str(addr.ip), addr.port, handler))

    async def _metrics(self, request: Request) -> Response:
        """The whole node: the leader's registry plus every follower's, summed (metricsmerge)."""
        if self.workers is None or request.path != "/metrics":
            return metrics_handler(self.registry)(request)
        texts = [self.registry.render(), *await self.workers.expositions()]
        body = metricsmerge.merge_expositions(texts).encode()
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

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
        """A follower swapped in a new mesh file: reload now (the swap syncs every worker)."""
        if self._watcher is not None:
            self._watcher.poll()

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
                ("zt_config_reload_errors_total", "Rejected config reloads", "counter",
                 float(services.store.reload_errors)),
                ("zt_policy_revoked_connections_total", "Live connections closed by a policy "
                 "change", "counter", float(services.tracker.revoked_total)),
                ("zt_live_inbound_connections", "Inbound connections open", "gauge",
                 float(services.tracker.count())),
            ]  # fmt: skip

        self.registry.add_collector(capture_counters)
        self.registry.add_collector(node_gauges)

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

    async def _sync_pods(self, snapshot: Snapshot) -> None:
        """Converge on the desired pods: stop those that left or changed, start the missing."""
        desired = self._desired(snapshot)
        for uid, pod in list(self.pods.items()):
            if desired.get(uid) != (pod.workload, pod.netns):
                await self.remove_pod(uid, forget=False)
        for uid, (workload, netns) in desired.items():
            if uid not in self.pods:
                try:
                    await self.add_pod(workload, netns)
                except (ZtError, OSError) as exc:
                    log.error("pod %s not served: %s", uid, exc)
        await self._sync_workers()

    async def add_pod(self, workload: Workload, netns: str) -> PodProxy:
        assert self.services is not None
        async with self._pod_lock:
            if workload.uid in self.pods:
                return self.pods[workload.uid]
            pod = PodProxy(self.services, workload, netns)
            try:
                await pod.start()
            except BaseException:
                await pod.stop(0.0, unenroll=True)
                raise
            self.pods[workload.uid] = pod
            return pod

    async def remove_pod(self, uid: str, *, forget: bool = True) -> None:
        """Drain and stop a pod; `forget` also drops a pod-API registration."""
        if forget:
            self._api_pods.pop(uid, None)
        async with self._pod_lock:
            pod = self.pods.pop(uid, None)
        if pod is None:
            raise NotFoundError(f"pod {uid!r} is not served by node {self.options.node}")
        # the followers drain their sockets of the pod while the leader drains its own
        await asyncio.gather(pod.stop(self.options.drain_deadline, unenroll=True),
                             self._sync_workers())  # fmt: skip
        assert self.services is not None
        if not any(p.identity == pod.identity for p in self.pods.values()):
            self.services.certs.forget(pod.identity)  # a workload that left: forget its cert

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
        self._api_pods[cmd.uid] = cmd.netns
        try:
            pod = await self.add_pod(workload, cmd.netns)
        except BaseException:
            self._api_pods.pop(cmd.uid, None)
            raise
        failed = {w: f[cmd.uid] for w, f in (await self._sync_workers()).items() if cmd.uid in f}
        if failed:  # answered only when every worker listens, or undone
            await self.remove_pod(cmd.uid)
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
        assert self.services is not None
        revoked = self.services.tracker.apply(new)
        if revoked:
            log.info("policy change closed %d live connection(s)", revoked)
        self._background = [t for t in self._background if not t.done()]  # one swap per edit
        self._background.append(asyncio.ensure_future(self._sync_pods(new)))

    def config_dump(self, store: SnapshotStore) -> dict[str, object]:
        services = self.services
        return {
            "node": self.options.node,
            "ready": self.readiness.ready,
            "config": {"path": str(self.options.config), "generation": store.generation,
                       "reload_errors": store.reload_errors, **document(store.current)},
            "pods": [self._pod_info(p) for p in self.pods.values()],
            "capture": services.capture.status().to_dict() if services else None,
            "workers": self.workers.info() if self.workers else [],
        }  # fmt: skip

    # -- shutdown -------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(sig)
        for condition in ("config", "certificates", "capture"):
            self.readiness.set(condition, False)
        log.info("node %s draining (deadline %g s)", self.options.node, self.options.drain_deadline)
        for task in self._background:
            task.cancel()
        pods = list(self.pods.values())
        self.pods.clear()
        followers = [self.workers.stop(self.options.drain_deadline)] if self.workers else []
        await asyncio.gather(
            *(p.stop(self.options.drain_deadline, unenroll=False) for p in pods),
            *followers,  # every follower drains too, and none is left behind
            return_exceptions=True,
        )
        for server in self._servers:
            server.close()
        if self.services is not None:
            # Pinned: leave capture in place (fail closed until the next zt). Unpinned: detach.
            self.services.capture.close(detach=self.options.pin_dir is None)
        log.info("node %s stopped", self.options.node)
