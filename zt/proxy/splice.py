"""Relay bytes between two TCP connections with exact half-close and reset propagation.

The plain-TCP counterpart of `relay` (TCP workloads, passthrough, plaintext inbound delivery): a FIN
on one side becomes `shutdown(SHUT_WR)` on the other, a reset on one side resets the other, and a
side stops reading while the other's write buffer is above its high-water mark (backpressure
bounded by the transports' buffers). Both directions run in `TcpSide` callbacks: each read is a
`recv_into` a reused, adaptively sized buffer, written to the other transport in the same call.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from zt.proxy.relay import reset_tcp_transport, set_tcp_write_limits
from zt.proxy.tcpside import TcpSide, TcpSource, take, transport_of


@dataclass(frozen=True)
class SpliceResult:
    a_to_b: int
    b_to_a: int
    outcome: str  # "closed" | "reset"


class _Splice:
    """Shared ending of the two sides: closed once both directions ended, reset at the first
    error or reset on either side."""

    def __init__(self, done: asyncio.Future[str]) -> None:
        self.done = done
        self.outcome: str | None = None
        self.sides: list[_SpliceSide] = []

    def maybe_closed(self) -> None:
        if all(side.ended for side in self.sides):
            self.finish("closed")

    def finish(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        for side in self.sides:
            if side.transport is None:
                continue
            if outcome == "closed":
                side.transport.close()  # after what is still buffered
            else:
                reset_tcp_transport(side.transport)
        if not self.done.done():
            self.done.set_result(outcome)


class _SpliceSide(TcpSide):
    """Reads one TCP connection and writes what it reads to `peer`'s transport."""

    def __init__(self, splice: _Splice) -> None:
        super().__init__()
        self.splice = splice
        self.peer: _SpliceSide = self
        self.copied = 0  # bytes read here and written to the peer
        self.ended = False  # this side's FIN was passed on

    def on_data(self, data: memoryview) -> None:
        peer = self.peer.transport
        if self.splice.outcome is not None or peer is None:
            return
        try:
            peer.write(data)
        except (OSError, RuntimeError):  # uvloop: RuntimeError on a transport closed meanwhile
            self.splice.finish("reset")
            return
        self.copied += len(data)
        if peer.get_write_buffer_size():
            self.release_buffer()  # the peer's transport may hold a view of our buffer
        if self.peer.write_paused:
            self.pause_reading()  # resumed by the peer's on_drained

    def on_eof(self) -> None:
        peer = self.peer.transport
        if self.splice.outcome is not None or peer is None:
            return
        try:
            if peer.can_write_eof():
                peer.write_eof()
        except (OSError, RuntimeError):
            self.splice.finish("reset")
            return
        self.ended = True
        self.splice.maybe_closed()

    def on_drained(self) -> None:
        self.peer.resume_reading()

    def on_lost(self, exc: BaseException | None) -> None:
        self.splice.finish("reset")


class Splice:
    """One splice, made before it runs so that its byte counts can be read while it does
    (telemetry flushes them; the sides only bump plain ints)."""

    def __init__(self) -> None:
        self.a: _SpliceSide | None = None
        self.b: _SpliceSide | None = None
        self._state: _Splice | None = None

    def reset(self) -> None:
        """Reset both sides now (e.g. a policy change revoked the connection): `run` returns
        with outcome "reset"."""
        if self._state is not None:
            self._state.finish("reset")

    def progress(self) -> tuple[int, int]:
        """(b_to_a, a_to_b) so far: towards `a`'s peer and from it."""
        if self.a is None or self.b is None:
            return 0, 0
        return self.b.copied, self.a.copied

    async def run(self, a: TcpSource, b: TcpSource | socket.socket) -> SpliceResult:
        """Run both directions until both ended; a reset on either side resets both (so does
        cancelling the splice: neither side saw a complete stream). `b` may be a connected
        socket (an upstream just dialed); it is closed here if it never becomes a transport."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        state = self._state = _Splice(done)
        side_a, side_b = self.a, self.b = _SpliceSide(state), _SpliceSide(state)
        side_a.peer, side_b.peer = side_b, side_a
        state.sides = [side_a, side_b]
        try:
            handover_a = take(side_a, a)
            if isinstance(b, socket.socket):
                try:
                    await loop.create_connection(lambda: side_b, sock=b)
                except BaseException:
                    b.close()
                    raise
                handover_b = None
            else:
                handover_b = take(side_b, b)
            if state.outcome is not None:  # reset() while the upstream became a transport
                for side in state.sides:
                    if side.transport is not None:
                        reset_tcp_transport(side.transport)
            for side, handover in ((side_a, handover_a), (side_b, handover_b)):
                assert side.transport is not None
                set_tcp_write_limits(side.transport)
                if state.outcome is None:
                    side.start(handover)
            outcome = await done
        except BaseException:
            state.outcome = state.outcome or "cancelled"
            for side in state.sides:
                if side.transport is not None:
                    reset_tcp_transport(side.transport)
            if (transport := transport_of(a)) is not None:
                reset_tcp_transport(transport)
            raise
        return SpliceResult(side_a.copied, side_b.copied, outcome)


async def splice(a: TcpSource, b: TcpSource | socket.socket) -> SpliceResult:
    """`Splice().run(a, b)`: when nobody needs the counts before the end."""
    return await Splice().run(a, b)
