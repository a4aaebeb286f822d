"""What every worker process of a node runs alike, the leader (zt/node/daemon.py) and each
follower (zt/node/worker.py): the shared services, the pods this process serves, its background
loops (config feed, certificates and their renewal), policy revocation, and the drain.

What differs stays with them: the leader decides which pods the node serves (mesh file, pod API,
removal grace), holds capture's enrollments, readiness and the endpoints; a follower serves what
its leader names over the control channel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from zt.capture import Capture, hostcheck
from zt.config import SnapshotStore
from zt.identity.manager import CertificateManager
from zt.node.dns import NodeDns
from zt.node.options import NodeOptions
from zt.node.pod import PodProxy
from zt.node.services import NodeServices, renew_loop
from zt.proxy.accept import install_exception_handler
from zt.state import Snapshot, Workload
from zt.telemetry.connections import ConnectionTelemetry
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node")

Runner = Callable[[], Awaitable[None]]


class NodeCore:
    """One worker process's share of a node. `who` names it in logs ("node n1", "worker 2")."""

    def __init__(self, options: NodeOptions, registry: Registry, *, worker: int, who: str) -> None:
        self.options = options
        self.registry = registry
        self.worker = worker
        self.who = who
        self.pods: dict[str, PodProxy] = {}
        self.services: NodeServices | None = None
        self._background: list[asyncio.Future[None]] = []

    def open(
        self,
        store: SnapshotStore,
        certs: CertificateManager,
        capture: Capture,
    ) -> NodeServices:
        """The services every pod of this process shares. Only the leader enrolls pods in
        capture; with worker processes every listener joins its port's SO_REUSEPORT group."""
        opts = self.options
        leader = self.worker == 0
        services = self.services = NodeServices(
            node=opts.node,
            store=store,
            certs=certs,
            capture=capture,
            registry=self.registry,
            telemetry=ConnectionTelemetry(self.registry, log_format=opts.log_format),
            socks5=opts.socks5,
            illegal_ports=opts.illegal_ports,  # zt's ports plus where the node moved its own
            accept_limits=opts.accept_limits,
            worker=self.worker,
            reuse_port=opts.workers > 1 or not leader,
            enrolls=leader,
            # the leader alone serves each pod's DNS (zt/node/dns.py says why)
            dns=NodeDns.open(opts.dns_upstreams, self.registry) if opts.dns and leader else None,
            original_source=self._original_source(),
        )
        # what escapes a callback is counted and logged rate-limited, not one traceback each
        install_exception_handler(metrics=services.accept_metrics())
        services.add_worker_collectors()
        # pods served but gone from the file (their removal grace) are served as they were
        store.retain(lambda: [pod.workload for pod in self.pods.values()])
        return services

    def _original_source(self) -> bool:
        """--original-source on a kernel that can tell zt's delivery SYN (zt/capture/origsrc.py);
        on an older one the node delivers from the pod's IP and says so (ztunnel: best effort)."""
        if not self.options.original_source:
            return False
        if hostcheck.supports_original_source():
            return True
        log.warning(
            "%s: --original-source needs kernel >= 5.17 (sk_lookup ingress_ifindex); delivering "
            "to apps from the pod's own IP",
            self.who,
        )
        return False

    async def renewal(self) -> None:
        """This process renews its own workload certificates (zt/node/services.py renew_loop)."""
        assert self.services is not None
        await renew_loop(self.services.certs, self.who)

    def run_in_background(self, *runners: Runner) -> None:
        """Loops that live as long as this process serves (cancelled by `shutdown`)."""
        self._background = [t for t in self._background if not t.done()]
        self._background += [asyncio.ensure_future(run()) for run in runners]

    async def start_pod(self, workload: Workload, netns: str, *, unenroll_failed: bool) -> PodProxy:
        """Serve one pod: its listeners, its capture enrollment (leader), its pool. A pod that
        fails to start is stopped again; `unenroll_failed` False keeps it captured (fail closed
        until a retry serves it)."""
        assert self.services is not None
        pod = PodProxy(self.services, workload, netns)
        try:
            await pod.start()
        except BaseException:
            await pod.stop(0.0, unenroll=unenroll_failed)
            raise
        self.pods[workload.uid] = pod
        return pod

    async def stop_pods(
        self, pods: Iterable[PodProxy], *, unenroll: bool, also: Iterable[Awaitable[object]] = ()
    ) -> None:
        """Drain these pods (and whatever `also` waits for) together, within the deadline."""
        await asyncio.gather(
            *(p.stop(self.options.drain_deadline, unenroll=unenroll) for p in pods),
            *also,
            return_exceptions=True,
        )

    def revoke(self, new: Snapshot) -> int:
        """A snapshot swap: close the live connections its policies now deny."""
        assert self.services is not None
        revoked = self.services.tracker.apply(new)
        if revoked:
            log.info("%s: policy change closed %d live connection(s)", self.who, revoked)
        return revoked

    async def shutdown(self, *, detach: bool, also: Iterable[Awaitable[object]] = ()) -> None:
        """Stop the background loops, drain every pod (leaving them enrolled: fail closed until
        the next zt), then close capture (`detach`: also its attachments)."""
        for task in self._background:
            task.cancel()
        pods = list(self.pods.values())
        self.pods.clear()
        await self.stop_pods(pods, unenroll=False, also=also)
        if self.services is not None:
            self.services.capture.close(detach=detach)
