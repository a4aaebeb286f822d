"""One pod served by the node: its listeners inside its netns, its capture enrollment, its
outbound pool and inbound HBONE server, and draining it when it goes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

from zt.capture import ListenerSockets, PodCapture
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateUnavailable
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import cached_client_context, rotating_server_context
from zt.node import inbound, outbound, socks5
from zt.node.podnet import STREAM_LIMIT, PodNet
from zt.node.services import NodeServices
from zt.proxy.accept import AcceptLoop, ConnectionGroup, StreamHandler, serve_streams
from zt.proxy.client import dial
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import DialFailed
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.server import HboneServer
from zt.proxy.stream import HboneStream
from zt.proxy.tls import client_peer_check, server_peer_check
from zt.state import Workload

log = logging.getLogger("zt.node.pod")

OUTBOUND_PORT, PLAINTEXT_PORT, HBONE_PORT = 15001, 15006, 15008


def capture_name(uid: str) -> str:
    """Capture names are at most 63 bytes; long uids keep a readable head and a hash."""
    if len(uid.encode()) <= 63:
        return uid
    digest = hashlib.sha256(uid.encode()).hexdigest()[:12]
    return uid.encode()[:50].decode(errors="ignore") + "~" + digest


class PodProxy:
    def __init__(self, services: NodeServices, workload: Workload, netns: str) -> None:
        self.services = services
        self.workload = workload
        self.uid = workload.uid
        self.netns = netns
        self.identity = SpiffeId.parse(workload.identity)
        self.net = PodNet(netns)
        self.pool = HbonePool(self._connect, clock=None)
        self._servers: list[asyncio.AbstractServer] = []
        # zt's accept loops (zt/proxy/accept.py): all of the pod's listeners share one group
        # (connection cap, half-open caps on :15008), exported per pod.
        self.connections_group = ConnectionGroup(self.uid, services.accept_limits)
        self._accept_metrics = services.accept_metrics()
        self._hbone: HboneServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.enrolled = False
        # HBONE connections that carried a CONNECT (weak: a closed driver leaves on its own)
        self._hbone_seen: weakref.WeakSet[HboneDriver] = weakref.WeakSet()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.services.certs.get(self.identity)  # fail here, not on the first connection
        transparent = (
            self.services.capture.mode == "sklookup"
        )  # docs/design.md §6: IP_TRANSPARENT on 15001

        reuse = self.services.reuse_port

        def listeners() -> ListenerSockets:
            return ListenerSockets(
                self.net.listener(OUTBOUND_PORT, transparent=transparent, reuse_port=reuse),
                self.net.listener(PLAINTEXT_PORT, reuse_port=reuse),
                self.net.listener(HBONE_PORT, reuse_port=reuse),
            )

        if reuse:
            try:
                await asyncio.to_thread(self.net.migrate_requests)
            except OSError as exc:  # older kernel: a dying worker's queue is reset, not moved
                log.warning("pod %s: tcp_migrate_req not set: %s", self.uid, exc)
        socks = await asyncio.to_thread(listeners)
        try:
            if self.services.enrolls:  # a follower worker's sockets join the leader's groups
                await asyncio.to_thread(self.services.capture.enroll, self._capture_spec(socks))
                self.enrolled = True
            self._serve(socks.outbound, self._handler(outbound.handle, "outbound"), "outbound")
            self._serve(socks.inbound_plain, self._handler(inbound.plaintext, "inbound"), "inbound")
            self._hbone = HboneServer(
                rotating_server_context(self._current_cert),
                peer_check=client_peer_check(self.workload.trust_domain),
                handler=self._stream_handler,
                on_limit=self.services.count_hbone_limit,
            )
            await self._hbone.start_on(
                socks.inbound_hbone, group=self.connections_group, metrics=self._accept_metrics
            )
            if self.services.socks5:
                proxy = await asyncio.to_thread(
                    functools.partial(
                        self.net.loopback_listener, socks5.SOCKS_PORT, reuse_port=reuse
                    )
                )
                self._serve(proxy, self._handler(socks5.handle, "socks5"), "socks5")
        except BaseException:
            self._close_servers()  # servers own their sockets; close the rest by hand
            for sock in (socks.outbound, socks.inbound_plain, socks.inbound_hbone):
                if sock.fileno() != -1:
                    sock.close()
            raise
        log.info(
            "pod %s served in %s (%s)", self.uid, self.netns, ", ".join(map(str, self.workload.ips))
        )

    def _capture_spec(self, socks: ListenerSockets) -> PodCapture:
        first = {ip.version: ip for ip in reversed(self.workload.ips)}
        ips = tuple(first[v] for v in (4, 6) if v in first)
        return PodCapture(capture_name(self.uid), Path(self.net.path), ips, socks)

    async def stop(self, deadline: float, *, unenroll: bool) -> None:
        """Stop accepting, drain (GOAWAY, let open connections finish until `deadline` seconds),
        then abort what remains. `unenroll=False` (node shutdown) leaves the pod captured: with
        the listeners gone its traffic is dropped (fail closed) until a new zt registers."""
        self._close_servers()
        if self._hbone is not None:
            await self._hbone.shutdown(deadline)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=deadline)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        await self.pool.close()
        if unenroll and self.enrolled:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.services.capture.unenroll, capture_name(self.uid))
            self.enrolled = False
        self.net.close()
        log.info("pod %s stopped (unenroll=%s)", self.uid, unenroll)

    def _serve(self, sock: socket.socket, handler: StreamHandler, name: str) -> None:
        """Accept on a plaintext listener of the pod (the loop owns `sock` from now on)."""
        serve = serve_streams(handler, limit=STREAM_LIMIT)
        self._servers.append(
            AcceptLoop(
                sock, serve, group=self.connections_group, metrics=self._accept_metrics, name=name
            )
        )

    def _close_servers(self) -> None:
        for server in self._servers:
            with contextlib.suppress(ValueError):  # its socket was closed already
                server.close()
        self._servers.clear()

    @property
    def connections(self) -> int:
        return len(self._tasks)

    # -- plumbing -----------------------------------------------------------------------------
    def _track(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _handler(
        self,
        handle: Callable[[PodProxy, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        listener: str,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.services.count_connection(listener)
            task = self._track(handle(self, reader, writer))
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return run

    def _stream_handler(self, stream: HboneStream) -> None:
        if stream.driver not in self._hbone_seen:  # the TLS connection's first CONNECT
            self._hbone_seen.add(stream.driver)
            self.services.count_connection("hbone")
        # serve_with: the driver cancels the tunnel's dial if the peer resets it unanswered.
        stream.serve_with(self._track(inbound.hbone_tunnel(self, stream)))

    def _current_cert(self) -> WorkloadCert:
        """The pod's certificate now (the manager renews it at half-life; each handshake asks)."""
        cert = self.services.certs.cached(self.identity)
        if cert is None:
            raise CertificateUnavailable(f"no certificate for {self.identity}")
        return cert

    async def _connect(self, key: PoolKey) -> HboneDriver:
        """The pool's dialer: a marked socket from inside this pod, TLS with the pod's cert."""
        cert = await self.services.certs.get(key.source)
        try:
            sock = await self.net.connect(key.destination, self.services.dial_timeout)
        except TimeoutError:
            raise DialFailed(
                str(key.destination), "no TCP connection within the dial timeout"
            ) from None
        except OSError as exc:
            raise DialFailed(str(key.destination), exc.strerror or str(exc)) from None
        return await dial(
            key.destination,
            cached_client_context(cert),
            peer_check=server_peer_check(sorted(key.expected)),
            sock=sock,
            timeout=self.services.dial_timeout,
        )
