"""The TCP side of a relay as callbacks instead of `StreamReader` + a task per direction.

The lever (docs/PERFORMANCE.md): "Fewer syscalls and copies on the TCP side (buffer reuse, `recv_into`, adaptive
buffer sizes like ztunnel's 1 KiB → 16 KiB → 256 KiB)". Once a relay starts, `TcpSide` takes the
transport over from the asyncio streams the node handed us (their buffered bytes and EOF first),
then every read is a `recv_into` one reused buffer whose size follows the traffic (`ReadSizing`,
pure) and goes straight to the relay's callback: no `StreamReader`, no task wake-up per chunk.
Works on asyncio's selector loop and on uvloop (both honour `set_protocol` to a BufferedProtocol
once reading is restarted).

Direct mode (tunnel set-up without a StreamReader): a `TcpSide` can also be the protocol a
transport is created with (`create_server` / `create_connection(sock=...)`). Until `start()` it
keeps what arrives (bytes, EOF, the loss) the way a StreamReader would, then replays it as the
hand-over, so both ways behave the same.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

# Buffer sizes a read may use, smallest first (ztunnel's 1 KiB → 16 KiB → 256 KiB).
LEVELS = (1024, 16 * 1024, 256 * 1024)
# Consecutive reads that would have fitted the next smaller buffer before it shrinks back.
SHRINK_AFTER = 4
# Direct mode: bytes kept before `start()` before reading pauses (a StreamReader of 1 MiB limit
# pauses at 2 MiB: the same bound).
EARLY_LIMIT = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ReadSizing:
    """Which buffer size the next read gets. Grows one level when a read filled the whole buffer
    (more was probably waiting), shrinks one level after SHRINK_AFTER reads that the smaller
    buffer would have held (small messages again: don't pin 256 KiB per idle-ish connection)."""

    level: int = 0
    small_reads: int = 0

    @property
    def size(self) -> int:
        return LEVELS[self.level]

    def after_read(self, nbytes: int) -> ReadSizing:
        level = self.level
        if nbytes >= LEVELS[level] and level + 1 < len(LEVELS):
            return ReadSizing(level + 1)
        if level and nbytes <= LEVELS[level - 1]:
            small = self.small_reads + 1
            return ReadSizing(level - 1) if small >= SHRINK_AFTER else ReadSizing(level, small)
        return self if not self.small_reads else ReadSizing(level)


@dataclass(frozen=True, slots=True)
class Handover:
    """What the asyncio streams held when a relay took the transport over."""

    buffered: bytes  # read by the StreamReader, not yet consumed
    eof: bool  # the peer's FIN already arrived
    error: BaseException | None  # the reader's exception (a reset before the relay started)


def _take_reader(reader: asyncio.StreamReader) -> Handover:
    """Empty the StreamReader (its buffer has no public accessor; `at_eof()` then tells EOF)."""
    buffer: bytearray | None = getattr(reader, "_buffer", None)
    data = b""
    if buffer:
        data = bytes(buffer)
        buffer.clear()
    return Handover(data, reader.at_eof(), reader.exception())


class TcpSide(asyncio.BufferedProtocol):
    """One TCP connection driven by callbacks. Subclasses implement `on_data` (a view into the
    reused read buffer, valid only during the call), `on_eof`, `on_lost` and `on_drained`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.write_paused = False  # our transport's write buffer is above its high-water mark
        self.eof_seen = False
        self.lost = False
        self.recv_sizes: dict[int, int] = {}  # buffer size → reads that returned data with it
        self._sizing = ReadSizing()
        self._view: memoryview | None = None
        self._old: asyncio.BaseProtocol | None = None
        self._reading_wanted = True  # False while the relay holds reads back (backpressure)
        self._started = False
        # Direct mode, before start(): what a StreamReader would have kept.
        self._early = bytearray()
        self._early_eof = False
        self._early_error: BaseException | None = None

    # -- take-over ------------------------------------------------------------------------------
    def bind(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Handover:
        """Make this protocol the transport's; return what the streams had already read."""
        transport = cast(asyncio.Transport, writer.transport)
        self.transport, self.writer = transport, writer
        if not transport.is_closing():  # else (reset before the relay) uvloop refuses calls
            transport.pause_reading()  # restarted in start(): uvloop picks its callback then
            self._old = transport.get_protocol()
            transport.set_protocol(self)
        return _take_reader(reader)

    def adopt(self, held: TcpSide) -> Handover:
        """Take over the transport of `held`, a connection accepted in direct mode before its
        relay was chosen (the route decides between an HBONE relay and a splice); return what it
        kept."""
        transport = held.transport
        assert transport is not None, "adopt() a connection that was made"
        self.transport = transport
        if not transport.is_closing():
            transport.pause_reading()  # restarted in start(): uvloop picks its callback then
            transport.set_protocol(self)
        return held._take_early()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Direct mode: the transport was created with this protocol; reads are kept until
        `start()`."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def _take_early(self) -> Handover:
        data, self._early = bytes(self._early), bytearray()
        return Handover(data, self._early_eof, self._early_error)

    def start(self, handover: Handover | None = None) -> None:
        """Replay the handover (direct mode: what arrived before), then read from the socket
        (unless it already ended)."""
        if handover is None:
            handover = self._take_early()
        self._started = True
        assert self.transport is not None
        if handover.error is not None or self.transport.is_closing():
            self._lose(handover.error or ConnectionResetError("closed before the relay"))
            return
        if handover.buffered:
            self.on_data(memoryview(handover.buffered))
        if handover.eof:
            self.eof_received()
        elif self._reading_wanted and not self.lost:
            self.socket_reading(True)

    @property
    def read_size(self) -> int:
        """The buffer size the next read gets."""
        return self._sizing.size

    # -- read flow control used by subclasses -----------------------------------------------------
    def pause_reading(self) -> None:
        self._reading_wanted = False
        if self.transport is not None and not self.lost:
            self.socket_reading(False)

    def resume_reading(self) -> None:
        self._reading_wanted = True
        if self._started and self.transport is not None and not self.lost and not self.eof_seen:
            self.socket_reading(True)

    @property
    def reading_wanted(self) -> bool:
        return self._reading_wanted

    def socket_reading(self, on: bool) -> None:
        """Start or stop reading the socket (the transport's reads; a subclass may read it
        another way, zt/proxy/relay.py splice)."""
        assert self.transport is not None
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def release_buffer(self) -> None:
        """The last view may still be referenced (a transport queued it): read into a new one."""
        self._view = None

    # -- asyncio.BufferedProtocol ---------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._view
        if view is None:
            view = self._view = memoryview(bytearray(self._sizing.size))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        assert view is not None
        if not self._started:
            self._keep_early(view[:nbytes])
            return
        size = len(view)
        self.recv_sizes[size] = self.recv_sizes.get(size, 0) + 1
        level = self._sizing.level
        sizing = self._sizing.after_read(nbytes)
        if sizing.level != level or not level or nbytes <= LEVELS[level - 1]:
            # Keep a buffer only while reads use it at its size: an idle (or small-message)
            # connection holds none, so idle tunnels cost no buffer memory.
            self._view = None
        self._sizing = sizing
        self.on_data(view[:nbytes])

    def _keep_early(self, data: memoryview) -> None:
        self._early += data
        if len(self._early) >= EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # start() resumes it

    def eof_received(self) -> bool:
        if not self._started:
            self._early_eof = True
            return True
        if not self.eof_seen:
            self.eof_seen = True
            self.on_eof()
        return True  # keep the transport open: the other direction may still be writing

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._started:  # direct mode: start() reports it (as a StreamReader would hold it)
            if exc is not None:
                self._early_error = exc
            return
        self._lose(exc)
        old, self._old = self._old, None
        if old is not None:  # let the StreamWriter's wait_closed() finish too
            old.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.on_drained()

    def _lose(self, exc: BaseException | None) -> None:
        if not self.lost:
            self.lost = True
            self._view = None
            self.on_lost(exc)

    # -- for subclasses -------------------------------------------------------------------------
    def on_data(self, data: memoryview) -> None:
        raise NotImplementedError

    def on_eof(self) -> None:
        raise NotImplementedError

    def on_lost(self, exc: BaseException | None) -> None:
        """The transport closed: a reset, an error, or a close/abort by us or someone else."""
        raise NotImplementedError

    def on_drained(self) -> None:
        """Our transport's write buffer fell to its low-water mark after a pause."""
        raise NotImplementedError


class HeldTcp(TcpSide):
    """An accepted connection whose relay is not chosen yet: it keeps what arrives (bytes, EOF,
    the loss) until a relay side `adopt()`s it. It never starts, so no callback runs here."""


# An app connection before its relay: held since accept (direct mode), or asyncio streams a
# negotiation read from first (SOCKS5).
TcpSource = HeldTcp | tuple[asyncio.StreamReader, asyncio.StreamWriter]


def take(side: TcpSide, source: TcpSource) -> Handover:
    """Make `side` the protocol of `source`'s transport; return what was read before."""
    if isinstance(source, HeldTcp):
        return side.adopt(source)
    return side.bind(*source)


def transport_of(source: TcpSource) -> asyncio.Transport | None:
    if isinstance(source, HeldTcp):
        return source.transport
    return cast(asyncio.Transport, source[1].transport)
