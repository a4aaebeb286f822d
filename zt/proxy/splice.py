"""Relay bytes between two TCP connections with exact half-close and reset propagation.

The plain-TCP counterpart of `relay` (TCP workloads, passthrough, plaintext inbound delivery): a FIN
on one side becomes `shutdown(SHUT_WR)` on the other, a reset on one side resets the other, and each
direction waits for the write to drain before reading more (backpressure bounded by the stream
buffers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from zt.proxy.relay import reset_tcp

READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class SpliceResult:
    a_to_b: int
    b_to_a: int
    outcome: str  # "closed" | "reset"


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: list[int]
) -> str:
    while True:
        try:
            data = await reader.read(READ_CHUNK)
        except OSError:
            return "reset"
        try:
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
                return "closed"
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError):  # uvloop: RuntimeError on a transport aborted meanwhile
            return "reset"
        counter[0] += len(data)


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> SpliceResult:
    """Run both directions until both ended; a reset on either side resets both."""
    up, down = [0], [0]
    tasks = [
        asyncio.ensure_future(_pump(a[0], b[1], up)),
        asyncio.ensure_future(_pump(b[0], a[1], down)),
    ]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if any(t.result() == "reset" for t in done):
            outcome = "reset"
        else:
            await asyncio.wait(pending)
            outcome = "reset" if any(t.result() == "reset" for t in pending) else "closed"
    finally:
        for task in tasks:
            task.cancel()
    for _, writer in (a, b):
        if outcome == "reset":
            reset_tcp(writer)
        elif not writer.transport.is_closing():
            writer.close()
    return SpliceResult(up[0], down[0], outcome)
