"""The node bench's app: a target server run inside a destination pod, and the client side of each
measurement, run from inside a source pod (an ordinary, unmarked socket, so capture sees it).

The first byte of a connection says what it is for (the data after it is never interpreted, so a
payload can not switch modes by accident):

    U   upload: the server reads to EOF, then answers the byte count (8 bytes, big-endian)
    D   download: 8 more bytes say how many; the server sends that many, then FIN
    E   echo: everything after it comes back, until EOF (ping-pong, new connections, idle ones)

The server counts the bytes it received per peer IP; a `GET`-less peek at them is the `P` byte,
asked over the pod's loopback (which capture leaves alone): it answers JSON {ip: bytes}.

    nsenter --net=/run/netns/<pod> python -m zt.bench.loadgen --port 5201
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from zt.capture.netns import run_in_netns

PORT = 5201
UPLOAD, DOWNLOAD, ECHO, PEERS = b"U", b"D", b"E", b"P"
CHUNK = 256 * 1024
PING = 64
_COUNT = struct.Struct(">Q")
T = TypeVar("T")


class LoadError(RuntimeError):
    """A measurement did not move the bytes it was meant to (a short read, a wrong count)."""


# -- server ----------------------------------------------------------------------------------------
class _Peers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes: dict[str, int] = {}

    def add(self, ip: str, n: int) -> None:
        with self._lock:
            self.bytes[ip] = self.bytes.get(ip, 0) + n


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise LoadError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _drain(sock: socket.socket) -> int:
    buf = bytearray(CHUNK)
    total = 0
    while n := sock.recv_into(buf):
        total += n
    return total


def _send_count(sock: socket.socket, n: int) -> None:
    block = memoryview(b"\x5a" * CHUNK)
    while n > 0:
        sock.sendall(block[: min(n, CHUNK)])
        n -= min(n, CHUNK)


def _serve_one(conn: socket.socket, peers: _Peers) -> None:
    with conn, contextlib.suppress(OSError, LoadError):
        conn.settimeout(300)
        ip = _host(conn.getpeername()[0])
        op = _recv_exact(conn, 1)
        if op == UPLOAD:
            got = _drain(conn)
            peers.add(ip, got + 1)
            conn.sendall(_COUNT.pack(got))
        elif op == DOWNLOAD:
            (size,) = _COUNT.unpack(_recv_exact(conn, _COUNT.size))
            peers.add(ip, 1 + _COUNT.size)
            _send_count(conn, size)
            conn.shutdown(socket.SHUT_WR)
            _drain(conn)
        elif op == ECHO:
            while data := conn.recv(CHUNK):
                peers.add(ip, len(data))
                conn.sendall(data)
        elif op == PEERS:
            conn.sendall(json.dumps(peers.bytes).encode())
        conn.shutdown(socket.SHUT_WR)


def _host(host: str) -> str:
    return host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host


def serve(port: int, stop: threading.Event) -> None:
    """Accept on [::]:port (dual-stack), one small-stack thread per connection, until `stop`."""
    threading.stack_size(256 * 1024)  # 1,000 idle connections are 1,000 threads
    peers = _Peers()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        lsock.bind(("::", port))
        lsock.listen(4096)
        lsock.settimeout(0.5)
        print(f"loadgen listening on {port}", flush=True)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_serve_one, args=(conn, peers), daemon=True).start()


# -- client (each function runs in a thread inside the source pod's netns) ------------------------
def _connect(dst: tuple[str, int], timeout: float) -> socket.socket:
    sock = socket.create_connection(dst, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def upload(dst: tuple[str, int], size: int, timeout: float) -> float:
    """Seconds to send `size` bytes on one connection and hear the server counted them all."""
    start = time.perf_counter()
    with _connect(dst, timeout) as sock:
        sock.sendall(UPLOAD)
        _send_count(sock, size)
        sock.shutdown(socket.SHUT_WR)
        (got,) = _COUNT.unpack(_recv_exact(sock, _COUNT.size))
    if got != size:
        raise LoadError(f"upload to {dst}: the server counted {got} of {size} bytes")
    return time.perf_counter() - start


def download(dst: tuple[str, int], size: int, timeout: float) -> float:
    """Seconds to receive `size` bytes on one connection, to the server's FIN."""
    start = time.perf_counter()
    with _connect(dst, timeout) as sock:
        sock.sendall(DOWNLOAD + _COUNT.pack(size))
        got = _drain(sock)
    if got != size:
        raise LoadError(f"download from {dst}: got {got} of {size} bytes")
    return time.perf_counter() - start


def ping_pong(dst: tuple[str, int], count: int, timeout: float) -> list[float]:
    """Round trips (µs) of `count` sequential 64-byte messages on one connection."""
    msg = b"p" * PING
    out: list[float] = []
    with _connect(dst, timeout) as sock:
        sock.sendall(ECHO)
        for _ in range(count):
            start = time.perf_counter_ns()
            sock.sendall(msg)
            _recv_exact(sock, PING)
            out.append((time.perf_counter_ns() - start) / 1000)
    return out


def new_connections(dst: tuple[str, int], seconds: float, limit: int, timeout: float) -> int:
    """Connections completed (connect, 64 B echoed, close) in `seconds`, at most `limit`."""
    end = time.monotonic() + seconds
    done = 0
    while done < limit and time.monotonic() < end:
        with _connect(dst, timeout) as sock:
            sock.sendall(ECHO + b"c" * PING)
            _recv_exact(sock, PING)
        done += 1
    return done


def open_idle(dst: tuple[str, int], count: int, timeout: float) -> list[socket.socket]:
    """`count` open connections, each proven end to end by one echoed byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = _connect(dst, timeout)
            socks.append(sock)
            sock.sendall(ECHO + b"i")
            _recv_exact(sock, 1)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def peers(netns: str, port: int = PORT) -> dict[str, int]:
    """The server's bytes received per peer IP, asked over the pod's loopback."""

    def ask() -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(PEERS)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return {str(k): int(v) for k, v in json.loads(data).items()}

    return run_in_netns(netns, ask, timeout=10)


def in_pod(netns: str, fn: Callable[[], T], timeout: float) -> T:
    """fn in a thread inside the pod's netns: its sockets are the pod app's."""
    return run_in_netns(netns, fn, timeout=timeout)


def in_pod_parallel(netns: str, fns: list[Callable[[], T]], timeout: float) -> list[T]:
    """Each fn in its own thread inside the pod's netns, all at once."""
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(fn: Callable[[], T]) -> None:
        try:
            value = run_in_netns(netns, fn, timeout=timeout)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=one, args=(fn,), daemon=True) for fn in fns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    if errors:
        raise errors[0]
    if len(results) != len(fns):
        raise LoadError(f"{len(fns) - len(results)} of {len(fns)} parallel clients did not finish")
    return results


@contextlib.contextmanager
def held(netns: str, dst: tuple[str, int], count: int, timeout: float) -> Iterator[int]:
    """`count` idle connections open for the block."""
    socks = in_pod(netns, lambda: open_idle(dst, count, timeout), timeout=timeout + count)
    try:
        yield len(socks)
    finally:
        close_all(socks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.bench.loadgen")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve(args.port, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
