"""One pod served by the node: its listeners inside its netns, its capture enrollment, its
outbound pool and inbound HBONE server, and draining it when it goes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from zt.addr import SocketAddr, from_sockaddr, unmap
from zt.capture import ListenerSockets, PodCapture
from zt.dns.server import DnsServer
from zt.errors import ZtError
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateUnavailable
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import cached_client_context, rotating_server_context
from zt.node.flows import PodFlows
from zt.node.podnet import STREAM_LIMIT, PodNet
from zt.node.services import NodeServices
from zt.proxy import socks5
from zt.proxy.accept import AcceptLoop, ConnectionGroup, Serve, serve_held, serve_streams
from zt.proxy.client import dial
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import DialFailed
from zt.proxy.inbound import Arrival
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.relay import reset_tcp_transport
from zt.proxy.server import HboneServer
from zt.proxy.socks5 import SOCKS_PORT
from zt.proxy.tcpside import HeldTcp
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
        self.net = PodNet(
            netns, services.capture if services.original_source else None, services.registry
        )
        self.pool = HbonePool(self._connect, clock=None)
        self._servers: list[asyncio.AbstractServer] = []
        # zt's accept loops (zt/proxy/accept.py): all of the pod's listeners share one group
        # (connection cap, half-open caps on :15008), exported per pod.
        self.connections_group = ConnectionGroup(self.uid, services.accept_limits)
        self._accept_metrics = services.accept_metrics()
        self._hbone: HboneServer | None = None
        self._dns: DnsServer | None = None
        self._tasks: set[asyncio.Future[object]] = set()
        self.enrolled = False
        flows = PodFlows(services, workload, self.net, self.pool)
        self._outbound = flows.outbound("outbound")
        self._socks5 = flows.outbound("socks5")
        self._resolve = flows.resolve  # SOCKS5 domain names
        self._inbound = flows.inbound()

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
            await self._start_dns()  # before enrolling: capture steers port 53 from then on
            if self.services.enrolls:  # a follower worker's sockets join the leader's groups
                await asyncio.to_thread(self.services.capture.enroll, self._capture_spec(socks))
                self.enrolled = True
            self._serve(
                socks.outbound, serve_held(self._counted("outbound", self._captured)), "outbound"
            )
            self._serve(
                socks.inbound_plain,
                serve_held(self._counted("inbound", self._plaintext)),
                "inbound",
            )
            self._hbone = HboneServer(
                rotating_server_context(self._current_cert),
                peer_check=client_peer_check(self.workload.trust_domain),
                flow=self._inbound,
                on_limit=self.services.count_hbone_limit,
                on_connection=self._hbone_connection,
            )
            await self._hbone.start_on(
                socks.inbound_hbone, group=self.connections_group, metrics=self._accept_metrics
            )
            if self.services.socks5:
                proxy = await asyncio.to_thread(
                    functools.partial(self.net.loopback_listener, SOCKS_PORT, reuse_port=reuse)
                )
                self._serve(proxy, serve_streams(self._socks5_client, limit=STREAM_LIMIT), "socks5")
        except BaseException:
            await self._stop_dns()
            self._close_servers()  # servers own their sockets; close the rest by hand
            for sock in (socks.outbound, socks.inbound_plain, socks.inbound_hbone):
                if sock.fileno() != -1:
                    sock.close()
            raise
        log.info(
            "pod %s served in %s (%s)", self.uid, self.netns, ", ".join(map(str, self.workload.ips))
        )

    async def _start_dns(self) -> None:
        dns = self.services.dns
        if dns is not None:
            store = self.services.store
            self._dns = await dns.serve(self.net.path, self.uid, lambda: store.current)

    async def _stop_dns(self) -> None:
        dns, self._dns = self._dns, None
        if dns is not None:
            await dns.close()

    def _capture_spec(self, socks: ListenerSockets) -> PodCapture:
        first = {ip.version: ip for ip in reversed(self.workload.ips)}
        ips = tuple(first[v] for v in (4, 6) if v in first)
        return PodCapture(
            capture_name(self.uid),
            Path(self.net.path),
            ips,
            socks,
            original_source=self.services.original_source,
        )

    async def stop(self, deadline: float, *, unenroll: bool) -> None:
        """Stop accepting, drain (GOAWAY, let open connections finish until `deadline` seconds),
        then abort what remains. `unenroll=False` (node shutdown) leaves the pod captured: with
        the listeners gone its traffic is dropped (fail closed) until a new zt registers."""
        self._close_servers()
        await self._stop_dns()  # its queries have nothing to drain: clients ask again
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

    def _serve(self, sock: socket.socket, serve: Serve, name: str) -> None:
        """Accept on a plaintext listener of the pod (the loop owns `sock` from now on)."""
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
        """Connections being served: outbound, plaintext, SOCKS5 and inbound HBONE tunnels."""
        return len(self._tasks) + (self._hbone.live_tunnels if self._hbone is not None else 0)

    # -- plumbing -----------------------------------------------------------------------------
    def _track(self, coro: Awaitable[object]) -> asyncio.Future[object]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _counted(
        self, listener: str, handle: Callable[[HeldTcp], Awaitable[None]]
    ) -> Callable[[HeldTcp], Awaitable[None]]:
        """Count the connection on `listener`; drain waits for (then cancels) its handler."""

        async def run(held: HeldTcp) -> None:
            self.services.count_connection(listener)
            task = self._track(handle(held))
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return run

    async def _captured(self, held: HeldTcp) -> None:
        """A connection captured on :15001: its original destination comes from capture."""
        with self.services.telemetry.socket("source"):
            assert held.transport is not None
            sock = held.transport.get_extra_info("socket")
            app = from_sockaddr(sock.getpeername())
            try:
                orig = self.services.capture.original_destination(sock)
            except ZtError as exc:
                log.warning("pod %s: outbound connection from %s dropped: %s", self.uid, app, exc)
                reset_tcp_transport(held.transport)
                return
            await self._outbound.carry(held, app, SocketAddr(unmap(orig.ip), orig.port))

    async def _plaintext(self, held: HeldTcp) -> None:
        """A non-HBONE connection to the pod (:15006), its destination untouched by sk_lookup."""
        with self.services.telemetry.socket("destination"):
            assert held.transport is not None
            sock = held.transport.get_extra_info("socket")
            target = from_sockaddr(sock.getsockname())
            source = from_sockaddr(sock.getpeername())
            await self._inbound.plaintext(held, Arrival(source, target, target, None))

    async def _socks5_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.services.count_connection("socks5")
        with self.services.telemetry.socket("source"):  # ztunnel counts its socks5 sockets so too
            task = self._track(socks5.serve(self._socks5, reader, writer, self._resolve))
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _hbone_connection(self, driver: HboneDriver) -> None:
        """A TLS connection on :15008 carried its first CONNECT."""
        self.services.count_connection("hbone")
        self.services.telemetry.hbone_socket(driver, driver.closed)

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
