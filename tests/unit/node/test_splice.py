"""TCP <-> TCP splice over loopback: bytes, half-close each way, reset propagation."""

from __future__ import annotations

import asyncio
import socket

from zt.proxy.splice import splice

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pair() -> tuple[Pair, Pair]:
    """Two connected stream pairs: (proxy side, remote side)."""
    accepted: asyncio.Queue[Pair] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    remote = await asyncio.open_connection("127.0.0.1", port)
    local = await accepted.get()
    server.close()
    return local, remote


def test_bytes_and_half_close_both_ways() -> None:
    async def scenario() -> tuple[bytes, bytes, str]:
        (app_side, app), (up_side, up) = await _pair(), await _pair()
        task = asyncio.ensure_future(splice(app_side, up_side))
        app[1].write(b"x" * 300_000)
        app[1].write_eof()  # app half-closes: upstream must see EOF, and may still answer
        got_up = await up[0].read()
        up[1].write(b"reply")
        up[1].write_eof()
        got_app = await app[0].read()
        result = await asyncio.wait_for(task, 5)
        return got_up, got_app, f"{result.a_to_b}/{result.b_to_a}/{result.outcome}"

    got_up, got_app, summary = asyncio.run(scenario())
    assert got_up == b"x" * 300_000 and got_app == b"reply"
    assert summary == "300000/5/closed"


def test_reset_on_one_side_resets_the_other() -> None:
    async def scenario() -> tuple[str, str]:
        (app_side, app), (up_side, up) = await _pair(), await _pair()
        task = asyncio.ensure_future(splice(app_side, up_side))
        sock = up[1].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        up[1].transport.abort()  # upstream sends RST
        try:
            await asyncio.wait_for(app[0].read(), 5)
            seen = "eof"
        except ConnectionResetError:
            seen = "reset"
        result = await asyncio.wait_for(task, 5)
        return seen, result.outcome

    assert asyncio.run(scenario()) == ("reset", "reset")
