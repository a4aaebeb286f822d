"""Pod applications of the lab: a dual-stack TCP echo server (run as a process inside a pod netns)
and a one-shot client that talks from inside a pod like an ordinary app (unmarked socket, so
capture sees it).

    nsenter --net=/run/netns/<pod> python -m zt.lab.apps echo --port 8080 --port 9090
    zt lab exec pod1-1 -- python -m zt.lab.apps send 10.96.0.10 80 hello
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from zt.capture.netns import run_in_netns
from zt.timescale import scaled

CHUNK = 65536


# -- server --------------------------------------------------------------------------------------
def _listener(port: int) -> socket.socket:
    """[::]:port with V6ONLY off: one socket for IPv4 and IPv6 clients."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(512)
    return sock


def _echo(conn: socket.socket) -> None:
    """Echo until the peer's FIN, then FIN back (half-close keeps the byte count exact)."""
    with conn:
        conn.settimeout(300)
        with contextlib.suppress(OSError):
            while data := conn.recv(CHUNK):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


def serve_echo(ports: list[int], stop: threading.Event | None = None) -> None:
    """Accept on every port, one thread per connection, until `stop` is set (or forever)."""
    listeners = [_listener(p) for p in ports]
    sel = selectors.DefaultSelector()
    for sock in listeners:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    try:
        while stop is None or not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                lsock = key.fileobj
                assert isinstance(lsock, socket.socket)
                with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
                    conn, addr = lsock.accept()
                    conn.setblocking(True)
                    # one line per accepted peer: tests prove what reached the app (and what not)
                    print(f"accept {_fmt(addr)} on {lsock.getsockname()[1]}", flush=True)
                    threading.Thread(target=_echo, args=(conn,), daemon=True).start()
    finally:
        for sock in listeners:
            sock.close()
        sel.close()


# -- client --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exchange:
    """What an app saw: its own address, the bytes it got back and how the connection ended."""

    local: str  # "ip:port" (IPv6 as "[ip]:port") the socket was bound to; "" if never bound
    sent: int
    received: bytes
    error: str  # "" when the peer echoed and closed cleanly
    seconds: float
    peer: str = ""  # the address it connected to (what a name resolved to)

    @property
    def echoed(self) -> bool:
        return not self.error


def _fmt(addr: tuple[object, ...]) -> str:
    """ip:port as zt logs it: IPv6 in brackets, IPv4-mapped IPv6 (a dual-stack socket) as IPv4."""
    host = str(addr[0])
    if host.startswith("::ffff:") and "." in host:
        host = host.removeprefix("::ffff:")
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _talk(host: str, port: int, payload: bytes, timeout: float) -> Exchange:
    """`host` is an IP address or a name (resolved by the C library, as any app's)."""
    start = time.monotonic()
    local, peer, received, error = "", "", b"", ""
    sock: socket.socket | None = None
    try:
        if _is_ip(host):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.settimeout(timeout)
            sock.connect((host, port))
        else:  # every address the name has, in the order getaddrinfo gives them
            sock = socket.create_connection((host, port), timeout=timeout)
        peer = _fmt(sock.getpeername())
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(CHUNK):
            received += chunk
    except OSError as exc:  # refused, reset, timeout, no such name: the verdict, not a crash
        error = type(exc).__name__ if not exc.strerror else exc.strerror
    finally:
        if sock is not None:
            # after the fact: a reset that beats connect()'s SO_ERROR check still leaves the
            # socket bound to the port the proxy saw (and logged as src.addr)
            with contextlib.suppress(OSError):
                bound = sock.getsockname()
                local = _fmt(bound) if bound[1] else ""
            sock.close()
    if not error and received != payload:
        error = f"echo mismatch: sent {len(payload)} bytes, got {len(received)} back"
    return Exchange(local, len(payload), received, error, time.monotonic() - start, peer)


def exchange(
    netns: str, host: str, port: int, payload: bytes, *, timeout: float = 10.0
) -> Exchange:
    """Connect from inside netns as an app would, send payload, half-close, read to EOF."""
    return run_in_netns(netns, lambda: _talk(host, port, payload, timeout), timeout=timeout + 10)


def exchange_by_name(
    netns: str, name: str, port: int, payload: bytes, *, timeout: float = 10.0
) -> Exchange:
    """`exchange` to a name, resolved as a pod app resolves it: a process under `ip netns exec`,
    whose /etc/resolv.conf is the pod's (zt.lab.dns), asking through glibc."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-P", "-m", "zt.lab.apps", "exchange",
            name, str(port), "--timeout", str(timeout)]  # fmt: skip
    done = subprocess.run(
        argv, input=payload, capture_output=True, timeout=timeout + 20, check=False
    )
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        err = done.stderr.decode(errors="replace").strip()[-300:]
        return Exchange("", len(payload), b"", f"app failed: {err or done.returncode}", 0.0)
    received = bytes.fromhex(doc["received"])
    return Exchange(doc["local"], doc["sent"], received, doc["error"], doc["seconds"], doc["peer"])


def connect_only(netns: str, host: str, port: int, *, timeout: float = 5.0) -> socket.socket:
    """An open app connection from inside netns (for tests that keep one open)."""

    def make() -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make, timeout=timeout + 10)


def wait_listening(netns: str, port: int, timeout: float = 10.0) -> None:
    timeout = scaled(timeout)
    """Poll the app's port over the pod's loopback (capture leaves loopback alone)."""
    deadline = time.monotonic() + timeout

    def probe() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    while time.monotonic() < deadline:
        if run_in_netns(netns, probe):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} in {netns} after {timeout:g} s")


# -- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.lab.apps")
    sub = parser.add_subparsers(dest="app", required=True)
    echo = sub.add_parser("echo", help="dual-stack TCP echo server")
    echo.add_argument("--port", type=int, action="append", required=True)
    send = sub.add_parser("send", help="send text as an app, print what comes back")
    send.add_argument("host")
    send.add_argument("port", type=int)
    send.add_argument("text", nargs="?", default="hello from zt lab")
    ex = sub.add_parser("exchange", help="send stdin to HOST PORT, print what happened as JSON")
    ex.add_argument("host")
    ex.add_argument("port", type=int)
    ex.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.app == "exchange":
        got = _talk(args.host, args.port, sys.stdin.buffer.read(), args.timeout)
        doc = {**dataclasses.asdict(got), "received": got.received.hex()}
        print(json.dumps(doc))
        return 0
    if args.app == "send":
        got = _talk(args.host, args.port, args.text.encode() + b"\n", 10.0)
        print(got.received.decode(errors="replace"), end="")
        print(
            f"[{got.local} -> {args.host}:{args.port}: sent {got.sent} B, got "
            f"{len(got.received)} B back{', ' + got.error if got.error else ''}]"
        )
        return 0 if got.echoed else 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"echo listening on {args.port}", flush=True)
    serve_echo(args.port, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
