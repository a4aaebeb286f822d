"""TLS on the socket: an asyncio Transport over a non-blocking `ssl.SSLSocket`.

The default TLS of asyncio/uvloop is a protocol layer over `ssl.MemoryBIO`: every byte is read from
the socket by the loop, copied into OpenSSL's memory BIO, decrypted, and the encrypted output
copied back out before the loop sends it. Here OpenSSL reads and writes the connection's fd itself,
driven by the loop's `add_reader` / `add_writer` readiness callbacks:

- reads: SSL_read into one reused 256 KiB buffer (one per process) until OpenSSL wants more
  input; each call returns at most one TLS record, so the buffer collects many records per
  `data_received`, and OpenSSL's read-ahead lets one recv(2) carry many records;
- writes: what is queued is joined and written with one non-blocking `send` (SSL_write); a write
  OpenSSL could not finish (SSLWantWriteError) is retried with the same bytes once the socket is
  writable (OpenSSL's rule for an unfinished SSL_write; `_ssl` sets
  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the retry may be a copy);
- a read that must write first (SSLWantWriteError from SSL_read, e.g. the answer to a TLS 1.3
  KeyUpdate) or a write that must read first (SSLWantReadError from SSL_write) waits for the
  readiness OpenSSL asked for, then retries;
- OpenSSL can hand record encryption to the kernel (kTLS, zt/proxy/ktls.py) only here, where it
  owns the socket; never through a MemoryBIO.

- held payloads (`write_chunks`, zt/proxy/zerocopy.py): with kTLS transmit on this connection a
  queued DATA payload may be a `HeldPayload` in a pipe. The bytes before it (ending with its frame
  header) are sent with MSG_MORE, straight to the socket (the kernel seals them as SSL_write would,
  and OpenSSL holds no unfinished write at that point: the queue is strictly in order), then the
  payload is spliced from the pipe; the kernel makes the records.

The protocol is the unchanged `HboneDriver`: connection_made / data_received / eof_received /
connection_lost / pause_writing / resume_writing, as with asyncio's own transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from zt.errors import UsageError
from zt.hbone import Chunk, HeldPayload
from zt.proxy import _openssl, ktls, zerocopy

# Module switch between this transport and asyncio/uvloop's SSL protocol (zt/proxy/client.py
# `dial`, zt/proxy/accept.py `serve_tls`); a per-call `tls_on_socket` argument overrides it.
# Off by default, measured on the node path (`zt bench node`, docs/PERFORMANCE.md): OpenSSL sends
# one TLS record (16 KiB) per send(2) where asyncio's SSL protocol sends a whole batch of records
# at once, so bulk throughput was x0.66-0.90 and CPU per GB x1.24 of the protocol path. What it
# saves is memory (78 KiB against 2.5 MiB per connection after a bulk transfer), and it is the
# only path on which the kernel can take the records over (kTLS, zt/proxy/ktls.py).
ENABLED = False


def used(override: bool | None = None) -> bool:
    """Whether a new connection runs TLS on the socket: `override` if given, else `ENABLED` or
    kTLS wanted (only this path can hand records to the kernel)."""
    if override is None:
        return ENABLED or ktls.wanted()
    if not override and ktls.wanted():
        raise UsageError("tls_on_socket: got False while kTLS is wanted, expected True or None")
    return override


READ_SIZE = 256 * 1024  # docs/PERFORMANCE.md: 256 KiB reads paid, 1 MiB did not
# Buffer fills per readiness callback before other callbacks get a turn (call_soon continues).
READ_ROUNDS = 4
# OpenSSL's read-ahead buffer (0: off). Without it SSL_read reads a record's 5-byte header, then
# its body: two recv(2) per 16 KiB record. With it, one recv(2) fills this many bytes of records.
READ_AHEAD = 256 * 1024
CLOSE_TIMEOUT = 5.0  # seconds for flush + close_notify + the peer's FIN before an abort
_DEFAULT_HIGH = 64 * 1024
_P = TypeVar("_P", bound=asyncio.Protocol)
# One read buffer for every connection of the process: a read fills it and hands a copy of what
# it got to `data_received` before the next read starts (reads run only from loop callbacks,
# never nested), so no connection holds 256 KiB while idle.
_READ_VIEW = memoryview(bytearray(READ_SIZE))


def _address(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None


_TLS_INFO = {"peercert": "getpeercert", "cipher": "cipher", "compression": "compression"}


class TlsSocketTransport(asyncio.Transport):
    """One TLS connection whose handshake is done (`handshake()`), serving `protocol`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.Protocol,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        # The `_ssl._SSLSocket` under `sock`: its read/write skip two Python layers per record
        # (SSLSocket.recv_into -> read -> _sslobj.read), which the per-record loops below feel.
        self._ssl: Any = sock._sslobj  # type: ignore[attr-defined]
        self._fd = sock.fileno()
        self._protocol = protocol
        self._out: list[bytes | HeldPayload] = []  # queued after `_unfinished`
        self._out_size = 0
        self._unfinished: bytes | None = None  # an SSL_write OpenSSL must be given again
        # Held payloads (write_chunks): bytes before one, sent with MSG_MORE, not finished yet;
        # the payload being spliced and how much of it is left.
        self._raw: memoryview | None = None
        self._held: HeldPayload | None = None
        self._held_left = 0
        self.holds = zerocopy.enabled_for(sock)  # may be given held payloads
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._protocol_paused = False
        self._reading = False  # a reader callback is registered
        self._writing = False  # a writer callback is registered
        self._read_paused = False  # by the protocol
        self._read_wants_write = False
        self._write_wants_read = False
        self._read_soon: asyncio.Handle | None = None
        self._closing = False  # close() or abort() was called, or the connection failed
        self._shutting = False  # close_notify sent, draining the peer's last bytes
        self._lost = False
        self._deadline: asyncio.TimerHandle | None = None
        self._extra: dict[str, Any] = {
            # A peer that refused our certificate may have reset the connection already (TLS 1.3
            # clients finish first): then the first read reports it, not this constructor.
            "peername": _address(sock.getpeername),
            "sockname": _address(sock.getsockname),
            "socket": sock,
            "ssl_object": sock,
            "sslcontext": sock.context,
        }

    def start(self) -> None:
        """Hand the connection to the protocol and start reading."""
        self._protocol.connection_made(self)
        if not self._closing and not self._read_paused:
            self._want_read(True)
            self._read_later()  # the handshake's last read may have buffered records already

    # -- asyncio.BaseTransport -------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in _TLS_INFO and not self._lost:  # asyncio's SSL extras, made when asked for
            return getattr(self._sock, _TLS_INFO[name])()
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Write what is queued, then TLS close_notify and FIN; the connection ends at the
        peer's FIN (or an abort after CLOSE_TIMEOUT)."""
        if self._closing:
            return
        self._closing = True
        self._cancel_read_soon()
        if not self._write_wants_read:  # else the queued write still needs its readiness
            self._want_read(False)
        self._deadline = self._loop.call_later(CLOSE_TIMEOUT, self.abort)
        if self._queue_empty():
            self._shutdown()
        # else: _flush calls _shutdown once the queue is empty

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- asyncio.ReadTransport -------------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._read_paused:
            return
        self._read_paused = True
        self._cancel_read_soon()
        if not self._read_wants_write:
            self._want_read(False)

    def resume_reading(self) -> None:
        if self._closing or not self._read_paused:
            return
        self._read_paused = False
        self._want_read(True)
        self._read_later()  # OpenSSL may hold decrypted or read-ahead bytes no poll reports

    # -- asyncio.WriteTransport ------------------------------------------------------------
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = _DEFAULT_HIGH if high is None else high
        low = high // 4 if low is None else low
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        pending = len(self._unfinished) if self._unfinished is not None else 0
        raw = len(self._raw) if self._raw is not None else 0
        return pending + raw + self._held_left + self._out_size

    def _queue_empty(self) -> bool:
        return (
            self._unfinished is None and self._raw is None and self._held is None and not self._out
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._queue_empty() and not self._write_wants_read:
            self._send(data)
        else:
            chunk = bytes(data)  # the caller may reuse its buffer (zt/hbone/_h2.py payload views)
            self._out.append(chunk)
            self._out_size += len(chunk)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        # One SSL_write for the lot: a 9-byte frame header and its payload in one TLS record.
        chunks = list(list_of_data)
        if len(chunks) == 1:
            self.write(chunks[0])
        elif chunks:
            self.write(b"".join(chunks))

    def write_chunks(self, chunks: list[Chunk]) -> None:
        """`writelines` that may hold `HeldPayload`s (only when `holds`: kTLS transmit is on)."""
        if not any(type(chunk) is HeldPayload for chunk in chunks):
            self.writelines(chunks)  # type: ignore[arg-type]  # no HeldPayload: checked
            return
        if self._closing or not self.holds:
            for chunk in chunks:
                if type(chunk) is HeldPayload:
                    _release(chunk)
            if not self._closing:
                raise UsageError("write_chunks: a held payload on a connection without kTLS TX")
            return
        for chunk in chunks:
            item = chunk if type(chunk) is HeldPayload else bytes(chunk)  # type: ignore[arg-type]
            self._out.append(item)
            self._out_size += len(item)
        if not self._write_wants_read and self._unfinished is None:
            self._flush()
        self._maybe_pause_protocol()

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close (HTTP/2 ends with GOAWAY)")

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        self._force_close(None)

    # -- reading ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
        if self._shutting:
            self._drain_after_close()
        elif self._read_paused or self._closing or self._read_wants_write:
            if not self._write_wants_read:  # it was registered for the write's sake only
                self._want_read(False)
        else:
            self._read()

    def _read(self) -> None:
        """Up to READ_ROUNDS buffers of decrypted bytes, one `data_received` per buffer."""
        self._read_soon = None
        read, view, size = self._ssl.read, _READ_VIEW, READ_SIZE
        for _ in range(READ_ROUNDS):
            got, eof, error = 0, False, None
            while got < size:
                try:
                    n = read(size - got, view[got:])
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLEOFError:  # a bare FIN: an EOF as with suppress_ragged_eofs
                    eof = True
                    break
                except ssl.SSLWantWriteError:
                    self._read_wants_write = True
                    self._want_write(True)
                    if not self._write_wants_read:
                        self._want_read(False)  # level-triggered: it would fire until writable
                    break
                except (OSError, ssl.SSLError) as exc:
                    error = exc
                    break
                if n == 0:  # close_notify
                    eof = True
                    break
                got += n
            if got:
                self._protocol.data_received(bytes(view[:got]))
            if error is not None:
                self._force_close(error)
                return
            if eof:
                self._eof()
                return
            if got < size or self._read_paused or self._closing or self._read_wants_write:
                return
        self._read_later()  # a full last round: OpenSSL may hold more; let others run first

    def _read_later(self) -> None:
        if self._read_soon is None:
            self._read_soon = self._loop.call_soon(self._read_if_reading)

    def _read_if_reading(self) -> None:
        self._read_soon = None
        if not self._read_paused and not self._closing and not self._read_wants_write:
            self._read()

    def _cancel_read_soon(self) -> None:
        if self._read_soon is not None:
            self._read_soon.cancel()
            self._read_soon = None

    def _eof(self) -> None:
        self._want_read(False)
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    # -- writing ---------------------------------------------------------------------------
    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """One SSL_write of `data`; what OpenSSL could not finish stays `_unfinished`."""
        try:
            sent = self._ssl.write(data)
        except ssl.SSLWantWriteError:
            self._unfinished = bytes(data)
            self._want_write(True)
            return
        except ssl.SSLWantReadError:
            self._unfinished = bytes(data)
            self._write_wants_read = True
            self._want_read(True)
            return
        except (OSError, ssl.SSLError) as exc:
            self._force_close(exc)
            return
        if sent < len(data):  # SSL_MODE_ENABLE_PARTIAL_WRITE is not set; be safe anyway
            self._unfinished = bytes(memoryview(data)[sent:])
            self._want_write(True)

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._read_paused and not self._closing:
                self._want_read(True)
                self._read()
        if self._shutting:
            self._shutdown()
            return
        self._flush()

    def _flush(self) -> None:
        while not self._lost:
            if self._unfinished is not None:
                data, self._unfinished = self._unfinished, None
            elif self._raw is not None or self._held is not None:
                if not self._send_held():
                    return  # waiting for the socket
                continue
            elif not self._out:
                break
            else:
                data = self._take_bytes()
                if self._out and type(self._out[0]) is HeldPayload:
                    self._start_held(data)
                    continue
            self._send(data)
            if self._unfinished is not None:
                return  # waiting for the socket (or for OpenSSL's read)
        if not self._read_wants_write:
            self._want_write(False)
        self._maybe_resume_protocol()
        if self._closing and not self._shutting and not self._lost:
            self._shutdown()

    def _take_bytes(self) -> bytes:
        """The queued bytes up to the first held payload, removed from the queue."""
        out = self._out
        end = next((i for i, item in enumerate(out) if type(item) is HeldPayload), len(out))
        taken: list[bytes] = out[:end]  # type: ignore[assignment]  # bytes only, before `end`
        del out[:end]
        data = taken[0] if len(taken) == 1 else b"".join(taken)  # b"" when a held one is first
        self._out_size -= len(data)
        return data

    def _start_held(self, before: bytes) -> None:
        held = self._out.pop(0)
        assert type(held) is HeldPayload
        self._out_size -= held.size
        self._raw = memoryview(before) if before else None
        self._held, self._held_left = held, held.size

    def _send_held(self) -> bool:
        """Send the bytes before the held payload (MSG_MORE: they end with its frame header, one
        record with the payload), then splice the payload. False while the socket is full."""
        try:
            while self._raw is not None:
                sent = socket.socket.send(self._sock, self._raw, socket.MSG_MORE)
                self._raw = self._raw[sent:] if sent < len(self._raw) else None
            held = self._held
            assert held is not None
            pipe: zerocopy.Pipe = held.source  # type: ignore[assignment]  # the relay's pipe
            while self._held_left:
                self._held_left -= pipe.drain(self._fd, self._held_left)
        except (BlockingIOError, InterruptedError):
            self._want_write(True)
            return False
        except OSError as exc:
            self._force_close(exc)
            return False
        self._held = None
        zerocopy.sent_frame()
        pipe.release()
        return True

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and self.get_write_buffer_size() > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            if not self._closing:
                self._protocol.resume_writing()

    # -- ending ----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Send close_notify (SSL_shutdown), then FIN; read and drop what the peer still sends
        until its FIN: closing with unread bytes would make the kernel send RST instead, and an
        RST can discard our last records before the peer read them."""
        if self._lost:
            return
        self._shutting = True
        try:
            self._sock.unwrap()  # first SSL_shutdown sends close_notify; the second wants input
        except ssl.SSLWantWriteError:
            self._want_write(True)
            return
        except (ssl.SSLWantReadError, ssl.SSLError, OSError, ValueError):
            pass  # close_notify went out (WantRead), or the connection is gone: FIN either way
        self._want_write(False)
        try:
            socket.socket.shutdown(self._sock, socket.SHUT_WR)
        except OSError:
            self._finish(None)
            return
        self._want_read(True)
        self._drain_after_close()

    def _drain_after_close(self) -> None:
        for _ in range(READ_ROUNDS):
            try:
                n = socket.socket.recv_into(self._sock, _READ_VIEW)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            if n == 0:
                break
        else:
            return
        self._finish(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._cancel_read_soon()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._want_read(False)
        self._want_write(False)
        for item in self._out:
            if type(item) is HeldPayload:
                _release(item)
        if self._held is not None:
            _release(self._held)
        self._out.clear()
        self._out_size = 0
        self._unfinished = self._raw = self._held = None
        self._held_left = 0
        with contextlib.suppress(OSError):
            self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- readiness registration ------------------------------------------------------------
    def _want_read(self, on: bool) -> None:
        if on and not self._reading and not self._lost:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        elif not on and self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _want_write(self, on: bool) -> None:
        if on and not self._writing and not self._lost:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        elif not on and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False


def _release(held: HeldPayload) -> None:
    pipe: zerocopy.Pipe = held.source  # type: ignore[assignment]  # the relay's pipe
    pipe.release()


def dump() -> dict[str, object]:
    """`tls` of the node's /config_dump: where TLS runs and what kTLS does (zt/proxy/ktls.py)."""
    return {"onSocket": used(), "ktls": ktls.status().to_dict(), "splice": zerocopy.enabled()}


# -- handshakes --------------------------------------------------------------------------------
async def wait_fd(sock: socket.socket, *, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def done() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, done)
    else:
        loop.add_reader(fd, done)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def handshake(sock: ssl.SSLSocket) -> None:
    """Run `sock`'s TLS handshake (non-blocking) to its end, waiting for readiness as OpenSSL asks.
    Unbounded by itself: callers hold the deadline (`asyncio.timeout`). SSL errors propagate as
    they are; callers translate them once (zt/identity/handshake.py `tls_error`)."""
    while True:
        try:
            sock.do_handshake()
            if ktls.enabled():
                ktls.count(sock)
            return
        except ssl.SSLWantReadError:
            await wait_fd(sock, writable=False)
        except ssl.SSLWantWriteError:
            await wait_fd(sock, writable=True)


def wrap(context: ssl.SSLContext, sock: socket.socket, *, server_side: bool) -> ssl.SSLSocket:
    """`sock` (connected, non-blocking) as an SSLSocket that has not shaken hands yet. The SSLSocket
    takes over the fd: `sock` is detached (its fileno() becomes -1). docs/design.md §2: no SNI."""
    try:
        sock.setblocking(False)
        # As asyncio's and uvloop's TCP transports do: a small record (a PING ack, a 64-byte
        # echo) must not wait for Nagle's ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = context.wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=False, server_hostname=None
        )
    except BaseException:
        sock.close()  # never wrapped: still ours to close
        raise
    try:
        if READ_AHEAD:
            _openssl.read_ahead(tls, READ_AHEAD)
        if ktls.enabled():
            _openssl.set_options(tls, ktls.SSL_OP_ENABLE_KTLS)
    except BaseException:
        tls.close()
        raise
    return tls


async def connect(
    context: ssl.SSLContext, sock: socket.socket, factory: Callable[[], _P], *, server_side: bool
) -> tuple[TlsSocketTransport, _P]:
    """Handshake on `sock`, then a transport serving `factory()`. On any failure the socket is
    closed and the exception propagates (the caller's deadline bounds it)."""
    tls = wrap(context, sock, server_side=server_side)
    try:
        await handshake(tls)
        protocol = factory()
        transport = TlsSocketTransport(asyncio.get_running_loop(), tls, protocol)
    except BaseException:
        tls.close()
        raise
    transport.start()
    return transport, protocol
