"""A plain TCP listener whose every connection is carried in one HBONE tunnel (the client half of a
zt pair: what outbound capture does once the destination is known; used by tests and the bench)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from zt.addr import SocketAddr
from zt.errors import ZtError
from zt.proxy.relay import RelayResult, relay, reset_tcp
from zt.proxy.stream import HboneStream

log = logging.getLogger("zt.proxy.forward")

StreamOpener = Callable[[], Awaitable[HboneStream]]
STREAM_LIMIT = 1024 * 1024  # StreamReader buffer (reading pauses at 2x)
RECENT = 1024


class TcpToHbone:
    """Accept TCP on `listen`; open a stream with `opener` (e.g. `pool.open(key, request)`) and
    relay. A refused tunnel (non-200, dial or TLS failure) resets the accepted connection."""

    def __init__(self, opener: StreamOpener) -> None:
        self._opener = opener
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Recent outcomes, for tests and debugging (bounded: the forwarder may run for days).
        self.results: deque[RelayResult] = deque(maxlen=RECENT)
        self.refused: deque[ZtError] = deque(maxlen=RECENT)

    async def start(self, listen: SocketAddr, *, reuse_port: bool = False) -> SocketAddr:
        """`reuse_port`: join an SO_REUSEPORT group (one listener per worker process)."""
        self._server = await asyncio.start_server(
            self._accepted, str(listen.ip), listen.port, limit=STREAM_LIMIT, backlog=1024,
            reuse_port=reuse_port,
        )  # fmt: skip
        port = self._server.sockets[0].getsockname()[1]
        return SocketAddr(listen.ip, port)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                stream = await self._opener()
            except ZtError as exc:
                log.info("tunnel refused: %s", exc)
                self.refused.append(exc)
                reset_tcp(writer)  # a refused tunnel is a reset, never a clean (empty) FIN
                return
            except Exception:  # a bug in the opener: still never leave the app hanging
                log.exception("tunnel opener failed")
                reset_tcp(writer)
                return
            self.results.append(await relay(stream, reader, writer))
        except asyncio.CancelledError:
            # close(): asyncio's start_server callback would log a cancelled handler as an error.
            reset_tcp(writer)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
