"""The endpoint server's caps over real loopback sockets: connections at once, head deadline,
head size, failing handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from zt.telemetry.http import MAX_HEAD, Limits, Request, Response, ServerStats, serve, stats_samples
from zt.timescale import scaled


def _ok(request: Request) -> Response:
    return Response.text(200, f"{request.method} {request.path}\n")


async def _until(cond: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(limit)
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _closed(reader: asyncio.StreamReader, limit: float = 10.0) -> bytes:
    """Everything the server sent before closing (b"" for a bare close or reset)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=scaled(limit))
    except ConnectionResetError:
        return b""


def _run(
    scenario: Callable[[asyncio.Server, int, ServerStats], Awaitable[None]], **kw: object
) -> ServerStats:
    stats = ServerStats()

    async def main() -> None:
        server = await serve("127.0.0.1", 0, _ok, limits=Limits(**kw), stats=stats)  # type: ignore[arg-type]
        try:
            await scenario(server, server.sockets[0].getsockname()[1], stats)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    return stats


def test_connection_over_the_cap_is_closed_at_once_and_counted() -> None:
    async def scenario(server: asyncio.Server, port: int, stats: ServerStats) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET /slow HTTP/1.1\r\n")  # a head that is not finished
        await _until(lambda: stats.open == 3, "3 open connections")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /fourth HTTP/1.1\r\n\r\n")
        assert await _closed(reader) == b""  # closed without an answer
        writer.close()
        assert stats.refused_total == 1
        # the held ones are still served, and once one is done a new client gets in
        first_reader, first_writer = held[0]
        first_writer.write(b"\r\n")
        assert (await _closed(first_reader)).endswith(b"\r\n\r\nGET /slow\n")
        await _until(lambda: stats.open == 2, "one connection done")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /fifth HTTP/1.1\r\n\r\n")
        assert (await _closed(reader)).startswith(b"HTTP/1.1 200 OK")
        for _, w in [*held, (reader, writer)]:
            w.close()

    stats = _run(scenario, max_connections=3, head_timeout=scaled(30))
    assert stats.refused_total == 1 and stats.timed_out_total == 0
    samples = {name: value for name, _, _, value in stats_samples({"metrics": stats})}
    assert samples["zt_endpoint_metrics_refused_total"] == 1


def test_one_source_cannot_take_every_slot() -> None:
    """A host holding idle connections gets its per-source share, not the whole server: a probe
    from another address (the kubelet's, Prometheus's) is still answered."""

    async def scenario(server: asyncio.Server, port: int, stats: ServerStats) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET /slow HTTP/1.1\r\n")  # a head that is not finished
        await _until(lambda: stats.open == 2, "2 open connections")
        assert await _closed(held[2][0]) == b""  # the third from 127.0.0.1: closed at once
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET /probe HTTP/1.1\r\n\r\n")
        assert (await _closed(reader)).startswith(b"HTTP/1.1 200 OK")
        for _, w in [*held, (reader, writer)]:
            w.close()

    stats = _run(scenario, max_connections=4, max_per_source=2, head_timeout=scaled(30))
    assert stats.refused_total == 1


def test_slowloris_head_is_closed_after_the_deadline() -> None:
    """One byte every 50 ms keeps the connection busy but never finishes the head: the deadline
    is on the whole head, not on idle time."""

    async def scenario(server: asyncio.Server, port: int, stats: ServerStats) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()

        async def drip() -> None:
            for _ in range(int(scaled(20) / 0.05)):  # bounded: at most 20 s of dripping
                writer.write(b"X")
                await asyncio.sleep(0.05)

        dripping = asyncio.ensure_future(drip())
        try:
            assert await _closed(reader, limit=15) == b""
        finally:
            dripping.cancel()
            writer.close()
        assert time.monotonic() - started >= 0.4  # not before its deadline (0.5 s)
        await _until(lambda: stats.open == 0, "the slow connection released")

    stats = _run(scenario, head_timeout=0.5)
    assert stats.timed_out_total == 1


def test_oversized_head_gets_431_and_a_failing_handler_500() -> None:
    async def scenario(server: asyncio.Server, port: int, stats: ServerStats) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n")
        assert (await _closed(reader)).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        writer.close()

    _run(scenario)

    async def boom(request: Request) -> Response:
        raise RuntimeError("bug")

    async def failing() -> bytes:
        stats = ServerStats()
        server = await serve("127.0.0.1", 0, boom, stats=stats)
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1]
            )
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            data = await _closed(reader)
            writer.close()
            assert stats.failed_total == 1 and stats.open == 0
            return data
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(failing()).startswith(b"HTTP/1.1 500 Internal Server Error")


def test_client_that_never_reads_is_cut_off() -> None:
    """A 32 MiB answer to a client that reads nothing: the write deadline closes it (loopback
    buffers hold a few MiB at most)."""
    big = Response(200, b"m" * (32 * 1024 * 1024))
    stats = ServerStats()

    async def main() -> None:
        server = await serve(
            "127.0.0.1", 0, lambda r: big, limits=Limits(write_timeout=0.5), stats=stats
        )
        try:
            port = server.sockets[0].getsockname()[1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            await _until(lambda: stats.timed_out_total == 1, "the write deadline")
            await _until(lambda: stats.open == 0, "the connection released")
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
