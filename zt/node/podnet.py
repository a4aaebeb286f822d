"""A pod's network namespace as the node uses it: one long-lived thread inside it makes sockets.

A socket belongs to the netns it was created in, whatever thread uses it later, so only `socket()`
(and `bind`/`listen` for listeners) run in the pod's thread; connecting and all I/O happen on the
event loop. One thread per pod avoids paying a thread start and two setns calls per connection.

Delivery to the app comes from the pod's own IP (`connect`) or, with original source (`zt run
--original-source`, the default, as ztunnel), from the caller's IP (`connect_from`: a transparent
socket bound to it; zt/capture/origsrc.py says how the replies come back to zt). When capture's
table of deliveries in flight is full (`DeliveriesFullError`), that one delivery comes from the
pod's IP: the connection works, the app sees the pod's IP, `zt_original_source_fallbacks_total`
counts it and a warning says so at most once a minute per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from zt.addr import IpAddress, SocketAddr
from zt.capture.bpfsys import setns
from zt.capture.errors import DeliveriesFullError
from zt.capture.netns import marked_socket, netns_path, open_listener, origsrc_socket
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node.podnet")

STREAM_LIMIT = 1024 * 1024


def _enter(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        setns(fd)
    finally:
        os.close(fd)


def _close_made(made: asyncio.Future[socket.socket]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result().close()


class Deliveries(Protocol):
    """Capture's side of an original-source delivery (zt.capture.Capture.delivering)."""

    def delivering(
        self, src: IpAddress, sport: int, dst: IpAddress, dport: int
    ) -> AbstractContextManager[None]: ...


FALLBACK_METRIC = "zt_original_source_fallbacks_total"
FALLBACK_HELP = (
    "Deliveries made from the pod's IP instead of the caller's because capture's table of"
    " deliveries in flight was full (ZT_MAX_DELIVERIES)"
)
WARN_INTERVAL = 60.0  # seconds between two warnings about fallbacks, per process


class Throttle:
    """At most one report per `interval`: `due(now)` is the number of events since the last
    report (this one included) when one is due, else None."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._pending = 0

    def due(self, now: float) -> int | None:
        self._pending += 1
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last, count, self._pending = now, self._pending, 0
        return count


_fallback_warnings = Throttle(WARN_INTERVAL)  # one per process: the table is the node's


class PodNet:
    def __init__(
        self,
        netns: str | Path,
        deliveries: Deliveries | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.path = netns_path(netns)
        self._deliveries = deliveries
        self._registry = registry
        self._thread = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{self.path.name}",
            initializer=_enter,
            initargs=(self.path,),
        )

    def listener(
        self, port: int, *, transparent: bool = False, reuse_port: bool = False
    ) -> socket.socket:
        """A marked dual-stack listener on [::]:port inside the pod (blocking; at pod start);
        `reuse_port` joins the port's SO_REUSEPORT group shared by the node's workers."""
        return open_listener(
            self.path, port, transparent=transparent, backlog=1024, reuse_port=reuse_port
        )

    def loopback_listener(self, port: int, *, reuse_port: bool = False) -> socket.socket:
        """A listener on the pod's 127.0.0.1:port (SOCKS5: reachable only from inside the pod)."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(128)
            except BaseException:
                sock.close()
                raise
            return sock

        return self._thread.submit(make).result(timeout=10)

    def migrate_requests(self) -> None:
        """net.ipv4.tcp_migrate_req=1 in the pod (Linux 5.14): "when a listener is closed,
        requests in its accept queue are migrated to another listener in the same reuseport
        group" (Documentation/networking/ip-sysctl.rst). With worker processes sharing each
        port, a follower that dies or drains hands its queued connections to the others instead
        of resetting them. /proc/sys/net follows the netns of the thread that opens it."""

        def write() -> None:
            Path("/proc/sys/net/ipv4/tcp_migrate_req").write_text("1\n")

        self._thread.submit(write).result(timeout=10)

    async def connect(self, target: SocketAddr, timeout: float = 10.0) -> socket.socket:
        """A marked TCP connection from inside the pod to `target` (raises OSError/TimeoutError)."""
        family = socket.AF_INET6 if target.ip.version == 6 else socket.AF_INET
        sock = await self._made(lambda: marked_socket(family))
        await self._connected(sock, target, timeout)
        return sock

    async def connect_from(
        self, source: IpAddress, target: SocketAddr, timeout: float = 10.0
    ) -> socket.socket:
        """Delivery to the app at `target` from the caller's IP `source`, port 0 (ztunnel's
        `freebind_connect`). From the pod's own IP instead when the two differ in family (an
        IPv4 caller tunnelled to an IPv6 address), when the caller is the pod itself (ztunnel
        connects directly then too) or without capture to let the SYN through."""
        if (
            self._deliveries is None
            or source.version != target.ip.version
            or source == target.ip
            or source.is_loopback
            or source.is_unspecified
        ):
            return await self.connect(target, timeout)
        sock = await self._made(lambda: origsrc_socket(source))
        try:
            port = int(sock.getsockname()[1])
            with self._deliveries.delivering(source, port, target.ip, target.port):
                await self._connected(sock, target, timeout)
        except DeliveriesFullError as exc:
            sock.close()
            self._fell_back(exc)
            return await self.connect(target, timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def _fell_back(self, exc: DeliveriesFullError) -> None:
        """Keep the connection working from the pod's IP, as a visible exception: counted, and
        logged at most once per WARN_INTERVAL (a full table comes with thousands of them)."""
        if self._registry is not None:
            self._registry.counter(FALLBACK_METRIC, FALLBACK_HELP).inc()
        count = _fallback_warnings.due(time.monotonic())
        if count is not None:
            log.warning(
                "original source: %d deliveries from the pod's IP instead of the caller's: %s",
                count,
                exc,
            )

    async def _made(self, make: Callable[[], socket.socket]) -> socket.socket:
        """A socket made by the pod's thread (inside its netns)."""
        loop = asyncio.get_running_loop()
        made = loop.run_in_executor(self._thread, make)
        try:
            sock = await asyncio.shield(made)
        except asyncio.CancelledError:
            # Cancelled (the peer reset the stream) while the pod's thread makes the socket:
            # close it when it arrives rather than leave the fd to the garbage collector.
            made.add_done_callback(_close_made)
            raise
        return sock

    @staticmethod
    async def _connected(sock: socket.socket, target: SocketAddr, timeout: float) -> None:
        """Connect `sock` to `target`; closes it when that fails."""
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (str(target.ip), target.port))
        except BaseException:
            sock.close()
            raise

    async def open_connection(
        self, target: SocketAddr, timeout: float = 10.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await self.connect(target, timeout)
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
