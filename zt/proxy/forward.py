"""A plain TCP listener whose every connection is carried in one HBONE tunnel (the client half of a
zt pair: what outbound capture does once the destination is known; used by tests and the bench).

Tunnel set-up cost (docs/PERFORMANCE.md): accepted connections get the relay's TCP side as their protocol
from the start (no StreamReader/StreamWriter, no hand-over); one short task opens the stream, and
the relay then runs in callbacks until its `done` future says how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from zt.addr import SocketAddr
from zt.errors import ZtError
from zt.proxy.relay import RelayResult, TcpRelay, reset_tcp_transport
from zt.proxy.stream import HboneStream

log = logging.getLogger("zt.proxy.forward")

StreamOpener = Callable[[], Awaitable[HboneStream]]
RECENT = 1024


class _AppSide(TcpRelay):
    """An accepted app connection: asks the forwarder for a tunnel as soon as it exists."""

    def __init__(self, forwarder: TcpToHbone) -> None:
        super().__init__()
        self._forwarder = forwarder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._forwarder._spawn(self)


class TcpToHbone:
    """Accept TCP on `listen`; open a stream with `opener` (e.g. `pool.open(key, request)`) and
    relay. A refused tunnel (non-200, dial or TLS failure) resets the accepted connection."""

    def __init__(self, opener: StreamOpener) -> None:
        self._opener = opener
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[TcpRelay] = set()  # relays running (reset by close())
        # Recent outcomes, for tests and debugging (bounded: the forwarder may run for days).
        self.results: deque[RelayResult] = deque(maxlen=RECENT)
        self.refused: deque[ZtError] = deque(maxlen=RECENT)

    async def start(self, listen: SocketAddr, *, reuse_port: bool = False) -> SocketAddr:
        """`reuse_port`: join an SO_REUSEPORT group (one listener per worker process)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AppSide(self), str(listen.ip), listen.port, backlog=1024,
            reuse_port=reuse_port,
        )  # fmt: skip
        port = self._server.sockets[0].getsockname()[1]
        return SocketAddr(listen.ip, port)

    def _spawn(self, tcp: TcpRelay) -> None:
        task = asyncio.ensure_future(self._open(tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, tcp: TcpRelay) -> None:
        try:
            stream = await self._opener()
        except ZtError as exc:
            log.info("tunnel refused: %s", exc)
            self.refused.append(exc)
            self._reset(tcp)  # a refused tunnel is a reset, never a clean (empty) FIN
            return
        except asyncio.CancelledError:  # close() while the tunnel was being opened
            self._reset(tcp)
            return
        except Exception:  # a bug in the opener: still never leave the app hanging
            log.exception("tunnel opener failed")
            self._reset(tcp)
            return
        self._live.add(tcp)
        tcp.done.add_done_callback(lambda _: self._finished(tcp))
        tcp.begin(stream)  # the app's bytes (and FIN) that arrived meanwhile go out first

    @staticmethod
    def _reset(tcp: TcpRelay) -> None:
        if tcp.transport is not None:
            reset_tcp_transport(tcp.transport)

    def _finished(self, tcp: TcpRelay) -> None:
        self._live.discard(tcp)
        if not tcp.done.cancelled():  # a relay cut by close() reports nothing
            self.results.append(tcp.result())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for tcp in list(self._live):
            tcp.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
