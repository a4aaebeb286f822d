"""The client pool against a real zt server on loopback; handshakes are counted at the server."""

from __future__ import annotations

import asyncio
import time

from tests.proxy.helpers import CLIENT_ID, Pki, run, tcp_server, zt_dial, zt_server
from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import DialFailed
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.stream import HboneStream


def _key(pki: Pki, addr: SocketAddr) -> PoolKey:
    return PoolKey(CLIENT_ID, frozenset({pki.server.identity}), addr)


async def _echo_once(stream: HboneStream, payload: bytes) -> bytes:
    await stream.write(payload)
    stream.write_eof()
    out = b""
    while chunk := await stream.read():
        out += chunk
        stream.acknowledge()
    return out


def test_1000_contending_tunnels_under_100_streams_cost_one_handshake(pki: Pki) -> None:
    """1,000 concurrent tunnel requests for one key, at most 99 in flight: exactly one dial."""

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            key = _key(pki, addr)
            request = ConnectRequest(SocketAddr(echo.ip, echo.port))
            gate = asyncio.Semaphore(99)

            async def one(i: int) -> bytes:
                async with gate:
                    stream = await pool.open(key, request)
                    return await _echo_once(stream, i.to_bytes(4, "big"))

            results = await asyncio.gather(*(one(i) for i in range(1000)))
            assert results == [i.to_bytes(4, "big") for i in range(1000)]
            assert server.connections_accepted == 1
            assert pool.dials == 1
            await pool.close()

    run(body(), timeout=120)


def test_1000_held_streams_open_ten_connections_one_dial_at_a_time(pki: Pki) -> None:
    """A connection is full at 100 streams (docs/design.md §2): 1,000 held streams → 10 connections,
    never two dials for the key at once."""
    in_flight = 0
    peak = 0

    async def body() -> None:
        nonlocal in_flight, peak

        async def counting_dial(key: PoolKey) -> HboneDriver:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await zt_dial(pki, key.destination)
            finally:
                in_flight -= 1

        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            pool = HbonePool(counting_dial)
            key = _key(pki, addr)
            request = ConnectRequest(SocketAddr(echo.ip, echo.port))
            streams = await asyncio.gather(*(pool.open(key, request) for _ in range(1000)))
            assert len({id(s.driver) for s in streams}) == 10
            assert all(len(d.streams) == 100 for d in pool.connections(key))
            assert server.connections_accepted == 10
            assert pool.dials == 10 and peak == 1
            for stream in streams:
                stream.reset(0x8)
            await pool.close()

    run(body(), timeout=120)


def test_goaway_connection_is_evicted(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            key = _key(pki, addr)
            first = await pool.acquire(key)
            for driver in list(server.drivers):
                driver.start_drain(5.0)
            for _ in range(200):
                if first.goaway:
                    break
                await asyncio.sleep(0.01)
            assert first.goaway
            second = await pool.acquire(key)
            assert second is not first
            assert pool.connections(key) == [second]
            assert server.connections_accepted == 2
            await pool.close()

    run(body())


def test_broken_connection_is_evicted(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            key = _key(pki, addr)
            first = await pool.acquire(key)
            for driver in list(server.drivers):
                driver.close("server side breaks it")
            await asyncio.wait_for(first.closed, 5)
            second = await pool.acquire(key)
            assert second is not first and second.alive
            await pool.close()

    run(body())


def test_idle_connection_closes_after_idle_timeout(pki: Pki) -> None:
    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination), idle_timeout=0.3)
            key = _key(pki, addr)
            stream = await pool.open(key, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            assert await _echo_once(stream, b"x") == b"x"
            [driver] = pool.connections(key)
            started = time.monotonic()
            await asyncio.wait_for(driver.closed, 3)
            assert time.monotonic() - started >= 0.25
            assert driver.close_reason == "idle_timeout"
            assert pool.connections(key) == []
            assert stream.driver is driver
            for _ in range(100):  # the server sees the close too
                if not server.drivers:
                    break
                await asyncio.sleep(0.01)
            assert not server.drivers
            await pool.close()

    run(body())


def test_busy_connection_is_not_reaped(pki: Pki) -> None:
    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki) as (_, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination), idle_timeout=0.2)
            key = _key(pki, addr)
            stream = await pool.open(key, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            await asyncio.sleep(0.6)
            assert [d.alive for d in pool.connections(key)] == [True]
            assert await _echo_once(stream, b"still here") == b"still here"
            await pool.close()

    run(body())


def test_failed_dial_is_shared_by_waiters_not_retried_by_each(pki: Pki) -> None:
    calls = 0

    async def failing(key: PoolKey) -> HboneDriver:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise DialFailed(str(key.destination), "connection refused")

    async def body() -> None:
        pool = HbonePool(failing)
        key = PoolKey(CLIENT_ID, frozenset(), SocketAddr.parse("127.0.0.1:1"))
        results = await asyncio.gather(
            *(pool.acquire(key) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, DialFailed) for r in results)
        assert calls == 1
        await pool.close()

    run(body())


def test_keys_do_not_share_connections(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            a = await pool.acquire(_key(pki, addr))
            other = PoolKey(CLIENT_ID, frozenset({pki.client.identity}), addr)
            b = await pool.acquire(other)
            assert a is not b
            assert server.connections_accepted == 2
            await pool.close()

    run(body())


def test_connection_is_full_at_the_peer_stream_limit(pki: Pki) -> None:
    """min(100, peer's MAX_CONCURRENT_STREAMS): a server advertising 5 gets a 2nd connection
    for the 6th stream."""
    five = HboneSettings(server_max_streams=5)

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki, settings=five) as (server, addr):
            pool = HbonePool(lambda key: zt_dial(pki, key.destination))
            key = _key(pki, addr)
            request = ConnectRequest(SocketAddr(echo.ip, echo.port))
            streams = [await pool.open(key, request) for _ in range(6)]
            assert [len(d.streams) for d in pool.connections(key)] == [5, 1]
            assert server.connections_accepted == 2
            for stream in streams:
                stream.reset(0x8)
            await pool.close()

    run(body())


def test_idle_client_connection_leaves_with_goaway_and_an_idle_server_never_closes(
    pki: Pki,
) -> None:
    """Idle close is the client's (ztunnel's pool_unused_release_timeout): the pool's reaper,
    on the clock it is given, sends GOAWAY and closes; the server side has no idle timer at
    all and keeps a connection without streams open as long as the client does."""
    clock = [0.0]

    async def body() -> None:
        settings = HboneSettings(ping_interval=None, idle_timeout=0.05)  # the server's: unused
        async with tcp_server() as echo, zt_server(pki, settings=settings) as (server, addr):
            pool = HbonePool(
                lambda key: zt_dial(
                    pki, key.destination, settings=HboneSettings(idle_timeout=None)
                ),
                clock=lambda: clock[0],
            )
            key = _key(pki, addr)
            stream = await pool.open(key, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            assert await _echo_once(stream, b"x") == b"x"
            [client] = pool.connections(key)
            await asyncio.sleep(0.3)  # six of the server's would-be idle timeouts
            [served] = server.drivers
            assert not served.closed.done() and client.alive
            assert pool.reap(client.idle_since + 299.0) == 0
            assert pool.reap(client.idle_since + 300.0) == 1
            await asyncio.wait_for(served.closed, 3)
            assert served.goaway and served.close_reason == "peer_goaway"
            assert client.close_reason == "idle_timeout"
            await pool.close()

    run(body())
