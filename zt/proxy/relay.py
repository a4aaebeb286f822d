"""Relay bytes between a TCP connection (asyncio streams) and an HBONE stream.

DESIGN.md §2 byte semantics, implemented here:
  "TCP FIN → DATA with END_STREAM; END_STREAM → `shutdown(SHUT_WR)`; RST_STREAM (NO_ERROR/CANCEL)
  after END_STREAM is EOF, not an error; a TCP reset → RST_STREAM. Acknowledge received DATA
  (WINDOW_UPDATE) only after the bytes were written to the local socket (backpressure)."
RFC 9113 §8.5: "A proxy treats any error in the TCP connection, which includes receiving a TCP
segment with the RST bit set, as a stream error of type CONNECT_ERROR" and "a proxy that receives a
RST_STREAM with CONNECT_ERROR [...] MUST send a TCP segment with the RST bit set".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

from zt.errors import H2_CANCEL, H2_CONNECT_ERROR
from zt.proxy.errors import StreamResetError
from zt.proxy.stream import HboneStream

READ_CHUNK = 1024 * 1024  # up to one advertised MAX_FRAME_SIZE per read
# The TCP side's write-buffer thresholds: room for a couple of 1 MiB frames before drain() waits
# (asyncio's 64 KiB default stalls the relay after every large frame).
TCP_WRITE_HIGH = 2 * 1024 * 1024
TCP_WRITE_LOW = 512 * 1024


@dataclass(frozen=True)
class RelayResult:
    """How a relay ended: byte counts each way and which side reset, if any."""

    tcp_to_stream: int
    stream_to_tcp: int
    outcome: str  # "closed" | "tcp_reset" | "stream_reset"


def reset_tcp_transport(transport: asyncio.WriteTransport) -> None:
    """Close with RST instead of FIN: SO_LINGER on with a zero timeout, then close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # uvloop's pseudo-socket raises ValueError once its fd is gone
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def reset_tcp(writer: asyncio.StreamWriter) -> None:
    reset_tcp_transport(writer.transport)


async def _tcp_to_stream(reader: asyncio.StreamReader, stream: HboneStream) -> str:
    while True:
        try:
            data = await reader.read(READ_CHUNK)
        except OSError:  # ECONNRESET and friends: the TCP peer aborted
            stream.reset(H2_CONNECT_ERROR)
            return "tcp_reset"
        if not data:
            stream.write_eof()
            return "closed"
        try:
            await stream.write(data)
        except StreamResetError:
            return "stream_reset"


async def _stream_to_tcp(stream: HboneStream, writer: asyncio.StreamWriter) -> str:
    while True:
        try:
            data = await stream.read()
        except StreamResetError:
            reset_tcp(writer)
            return "stream_reset"
        try:
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()  # shutdown(SHUT_WR): the peer's END_STREAM, passed on
                await writer.drain()
                return "closed"
            writer.write(data)
            await writer.drain()
        except (OSError, RuntimeError):  # uvloop: RuntimeError on a transport aborted meanwhile
            stream.reset(H2_CONNECT_ERROR)
            return "tcp_reset"
        stream.acknowledge()  # only now: the socket took the bytes


async def relay(
    stream: HboneStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> RelayResult:
    """Run both directions until each has ended or one side reset; close the TCP socket. If the
    relay itself is cancelled (shutdown), both sides are reset: neither saw a complete stream."""
    writer.transport.set_write_buffer_limits(high=TCP_WRITE_HIGH, low=TCP_WRITE_LOW)
    up = asyncio.ensure_future(_tcp_to_stream(reader, stream))
    down = asyncio.ensure_future(_stream_to_tcp(stream, writer))
    try:
        outcomes = await asyncio.gather(up, down)
    except BaseException:
        stream.reset(H2_CANCEL)
        reset_tcp(writer)
        raise
    finally:
        for task in (up, down):
            task.cancel()
    if "tcp_reset" in outcomes:
        outcome = "tcp_reset"
    elif "stream_reset" in outcomes:
        outcome = "stream_reset"
    else:
        outcome = "closed"
    if outcome == "closed":
        writer.close()
    else:
        reset_tcp(writer)
    return RelayResult(stream.bytes_out, stream.bytes_in, outcome)
