"""A pod's network namespace as the node uses it: one long-lived thread inside it makes sockets.

A socket belongs to the netns it was created in, whatever thread uses it later, so only `socket()`
(and `bind`/`listen` for listeners) run in the pod's thread; connecting and all I/O happen on the
event loop. One thread per pod avoids paying a thread start and two setns calls per connection.

Delivery to the app comes from the pod's own IP (`connect`) or, with original source (`zt run
--original-source`, the default, as ztunnel), from the caller's IP (`connect_from`: a transparent
socket bound to it; zt/capture/origsrc.py says how the replies come back to zt).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from zt.addr import IpAddress, SocketAddr
from zt.capture.bpfsys import setns
from zt.capture.netns import marked_socket, netns_path, open_listener, origsrc_socket

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


class PodNet:
    def __init__(self, netns: str | Path, deliveries: Deliveries | None = None) -> None:
        self.path = netns_path(netns)
        self._deliveries = deliveries
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
        except BaseException:
            sock.close()
            raise
        return sock

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
