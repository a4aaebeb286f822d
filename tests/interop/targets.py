"""Destination servers for interop tests, on threads (independent of any event loop, since Envoy
reaches them from another process). Each is bound to 127.0.0.1, stopped in `finally`."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable, Iterator

Handler = Callable[[socket.socket], None]
RESET = b"<reset>"  # what a recording target stores when its peer reset the connection


def echo(conn: socket.socket) -> None:
    """Echo until EOF, then FIN (so the peer's FIN comes back as ours)."""
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def hello_first(received: queue.Queue[bytes]) -> Handler:
    """Send a greeting and FIN at once, then read the peer until its EOF (half-close both ways)."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"hello, then FIN")
        conn.shutdown(socket.SHUT_WR)
        got = bytearray()
        try:
            while data := conn.recv(1 << 16):
                got += data
        except ConnectionResetError:
            got += RESET
        received.put(bytes(got))

    return handler


def reply_after_eof(received: queue.Queue[bytes]) -> Handler:
    """Read until the peer's EOF, then answer and FIN."""

    def handler(conn: socket.socket) -> None:
        got = bytearray()
        while data := conn.recv(1 << 16):
            got += data
        received.put(bytes(got))
        conn.sendall(b"reply after your FIN")
        conn.shutdown(socket.SHUT_WR)

    return handler


@contextlib.contextmanager
def serve(handler: Handler) -> Iterator[int]:
    """Run `handler` per connection on daemon threads; yield the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    stop = threading.Event()

    def one(conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            handler(conn)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
