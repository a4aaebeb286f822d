"""The client connection pool.

docs/design.md §2: Pooling: connections keyed by (source identity, expected peer identities, destination
address); one dial per key at a time under contention; a connection is full at min(100, peer's max
streams); idle connections close after 5 min; GOAWAY drains. Idle close is the client's alone: the
reaper sends GOAWAY (ztunnel's pool_unused_release_timeout); an HBONE server never closes a
connection for idling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.identity.spiffe import SpiffeId
from zt.proxy.client import DIAL_TIMEOUT, open_tunnel
from zt.proxy.driver import HboneDriver
from zt.proxy.stream import HboneStream

IDLE_TIMEOUT = 300.0


@dataclass(frozen=True)
class PoolKey:
    """Who dials (source identity), whom it accepts (expected identities), where (address)."""

    source: SpiffeId
    expected: frozenset[SpiffeId]
    destination: SocketAddr


Connector = Callable[[PoolKey], Awaitable[HboneDriver]]


@dataclass
class _Entry:
    drivers: list[HboneDriver] = field(default_factory=list)
    dialing: asyncio.Future[None] | None = None


class HbonePool:
    """Hands out streams on pooled connections, dialing at most one connection per key at a time."""

    def __init__(
        self,
        connector: Connector,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._connector = connector
        self._entries: dict[PoolKey, _Entry] = {}
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._reaper: asyncio.Task[None] | None = None
        self.dials = 0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def open(
        self, key: PoolKey, request: ConnectRequest, timeout: float = DIAL_TIMEOUT
    ) -> HboneStream:
        """A stream for `request` on a connection for `key` (raises TunnelRefused / DialFailed)."""
        driver = await self.acquire(key)
        return await open_tunnel(driver, request, timeout=timeout)

    async def acquire(self, key: PoolKey) -> HboneDriver:
        """A connection with room for one more stream; dials when none has room."""
        self._start_reaper()
        entry = self._entries.setdefault(key, _Entry())
        while True:
            entry.drivers = [d for d in entry.drivers if d.alive]  # evict broken / GOAWAY'd
            for driver in entry.drivers:
                if driver.usable:
                    return driver
            if entry.dialing is not None:
                # Someone is dialing this key: wait for it rather than dialing too.
                await asyncio.shield(entry.dialing)
                continue
            return await self._dial(key, entry)

    async def _dial(self, key: PoolKey, entry: _Entry) -> HboneDriver:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.dialing = done
        self.dials += 1
        try:
            driver = await self._connector(key)
        except BaseException as exc:
            entry.dialing = None
            # Waiters share this failure instead of each dialing a dead target in turn.
            done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            done.exception()
            raise
        entry.drivers.append(driver)
        entry.dialing = None
        done.set_result(None)  # waiters retry: they find this connection or dial again
        return driver

    def connections(self, key: PoolKey) -> list[HboneDriver]:
        entry = self._entries.get(key)
        return [d for d in entry.drivers if d.alive] if entry else []

    def reap(self, now: float) -> int:
        """Close connections without streams for `idle_timeout`; return how many were closed."""
        closed = 0
        for key, entry in list(self._entries.items()):
            keep = []
            for driver in entry.drivers:
                if not driver.alive:
                    continue
                if not driver.streams and now - driver.idle_since >= self.idle_timeout:
                    # GOAWAY, then close with it (and TLS close_notify) written: the server
                    # learns the connection ended on purpose; it never closes one for idling
                    driver.start_drain(0.0)
                    driver.close("idle_timeout", abort=False)
                    closed += 1
                else:
                    keep.append(driver)
            entry.drivers = keep
            if not keep and entry.dialing is None:
                del self._entries[key]
        return closed

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_loop())

    async def _reap_loop(self) -> None:
        period = max(0.01, min(self.idle_timeout / 4, 30.0))
        while self._entries:
            await asyncio.sleep(period)
            self.reap(self._now())

    async def close(self) -> None:
        """Close every pooled connection and stop the reaper."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for entry in self._entries.values():
            for driver in entry.drivers:
                driver.close("pool_closed")
        self._entries.clear()
