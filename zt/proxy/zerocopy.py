"""splice(2) of DATA payloads: app socket → pipe → kTLS socket, the payload never in user space.

With kTLS transmit (zt/proxy/ktls.py) the kernel seals every byte written to the HBONE socket into
TLS records, so a DATA payload can go there without Python reading it: splice(2) moves the app
socket's pages into a pipe, then from the pipe into the TLS socket. What stays in user space is
the frame's 9-byte header (RFC 9113 §4.1) and h2's accounting of the payload's length (flow
control windows, frame size: zt/hbone/_h2.py `HeldPayload`).

The pieces, in the order bytes take them:

1. `TcpRelay` (zt/proxy/relay.py) stops uvloop from reading the app socket and watches a dup of
   its fd instead; when it is readable, `Pipe.fill` splices at most what the stream's windows, the
   frame size and the pipe's room allow (splice(2): "SPLICE_F_MOVE ... SPLICE_F_NONBLOCK").
2. The relay queues one DATA frame of that length whose payload is a `HeldPayload` naming the
   pipe (`HboneStream.try_send_held`).
3. The TLS transport (zt/proxy/tlssocket.py) writes the bytes before it, which end with the frame
   header, with MSG_MORE (the kernel keeps the TLS record open), then `Pipe.drain` splices the
   payload into the socket; the kernel closes the record.

A pipe is FIFO and belongs to one relay, whose frames its one connection sends in order, so the
n-th held payload is the n-th run of bytes in the pipe. The relay and every queued payload hold a
reference; the fds close with the last one (a reset relay's queued frames still go out whole:
h2 counted them already).

Off by default (`zt run --splice`), and only with `--ktls on`: spliced bytes reach the socket
without OpenSSL, so the KeyUpdate hazard of kTLS (zt/proxy/ktls.py) applies unchanged, and without
kTLS transmit the bytes would leave unencrypted (`enabled_for` checks the connection itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable

from zt.errors import UsageError
from zt.proxy import ktls

# linux/fcntl.h: F_SETPIPE_SZ = F_LINUX_SPECIFIC_BASE + 7, F_GETPIPE_SZ = + 8 (Python 3.10+ has
# fcntl.F_SETPIPE_SZ; the literals keep mypy's stubs out of it).
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
# Room for one 256 KiB frame; /proc/sys/fs/pipe-max-size (1 MiB by default) bounds it. The pipe
# holds references to the socket's pages, one page slot per received fragment: with small
# fragments it fills before its byte size (then splice says EAGAIN and the relay waits for room).
PIPE_SIZE = 256 * 1024
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class _State:
    enabled = False
    bytes = 0  # payload bytes spliced into TLS sockets by this process
    frames = 0


def configure(enabled: bool) -> None:
    """`zt run --splice`: once at start, after `ktls.configure`. Refused without kTLS."""
    if enabled and not ktls.wanted():
        raise UsageError(
            "--splice: got on with kTLS off, expected --ktls on (spliced bytes bypass OpenSSL: "
            "only the kernel's TLS can seal them)"
        )
    _State.enabled = enabled


def enabled() -> bool:
    return _State.enabled


def enabled_for(sock: socket.socket) -> bool:
    """Whether held payloads may go to this TLS connection: splice is on and the kernel holds the
    connection's transmit keys (else spliced bytes would leave in clear text)."""
    return _State.enabled and ktls.connection_ktls(sock)[0]


class Pipe:
    """One relay's pipe (see the module docstring): `fill` from the app socket, `drain` into the
    TLS socket, `held` bytes in between."""

    def __init__(self, on_room: Callable[[], None]) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # An unprivileged pipe-max-size below PIPE_SIZE: the default size still works.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.capacity = fcntl.fcntl(self.write_fd, F_GETPIPE_SZ)
        self.held = 0
        self.users = 1  # the relay; plus one per queued HeldPayload
        self.waiting = False  # the relay waits for room (`on_room` when some was made)
        self._on_room = on_room

    def __del__(self) -> None:
        # Payloads queued on a connection that died before the transport took them (its core
        # is dropped with them) never release: close with the last reference instead.
        if self.users > 0:
            self.users = 0
            for fd in (self.read_fd, self.write_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def room(self) -> int:
        return max(self.capacity - self.held, 0)

    def fill(self, fd: int, size: int) -> int:
        """Splice up to `size` bytes from socket `fd`; 0 at EOF. Raises BlockingIOError when the
        socket has nothing (or the pipe no slot) and OSError (e.g. ECONNRESET) as splice does."""
        got = os.splice(fd, self.write_fd, size, flags=_FLAGS)
        self.held += got
        return got

    def drain(self, fd: int, size: int) -> int:
        """Splice up to `size` held bytes into socket `fd`. Raises BlockingIOError when the socket
        is full, OSError as splice does."""
        sent = os.splice(self.read_fd, fd, size, flags=_FLAGS)
        if sent == 0:
            raise BrokenPipeError(f"pipe held {self.held} bytes, gave none")
        self.held -= sent
        _State.bytes += sent
        if self.waiting:
            self.waiting = False
            self._on_room()
        return sent

    def hold(self) -> None:
        self.users += 1

    def release(self) -> None:
        """One user is done (a payload was sent or dropped, or the relay ended)."""
        self.users -= 1
        if self.users == 0:
            os.close(self.read_fd)
            os.close(self.write_fd)


def sent_frame() -> None:
    _State.frames += 1


def samples() -> list[tuple[str, str, str, float]]:
    """Metrics (a Registry collector, zt/telemetry/metrics.py)."""
    return [
        ("zt_splice_enabled", "1 when DATA payloads are spliced into kTLS sockets (--splice)",
         "gauge", float(_State.enabled)),
        ("zt_splice_bytes_total", "DATA payload bytes spliced from app sockets into kTLS "
         "sockets, never read by the process", "counter", float(_State.bytes)),
        ("zt_splice_frames_total", "DATA frames whose payload was spliced", "counter",
         float(_State.frames)),
    ]  # fmt: skip
