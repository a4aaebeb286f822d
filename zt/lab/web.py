"""The lab's HTTP app behind the waypoint, and the one-shot HTTP client of the demo.

The app answers every GET (/ and /admin alike) with 200, so a 403 can only come from the waypoint's
L7 policy; it logs one line per request (what reached it, and what not).

    nsenter --net=/run/netns/<pod> python -m zt.lab.web --port 8081
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from zt.capture.netns import run_in_netns
from zt.lab import runner

BODY = "zt lab web: {method} {path}\n"


class _Server(ThreadingHTTPServer):
    """[::]:port with V6ONLY off: one socket for IPv4 and IPv6 clients."""

    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = BODY.format(method="GET", path=self.path).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        # one request per connection: the waypoint's tunnel to this pod then ends with each
        # request, so the pod's node writes its access record at once (zt.lab.waypointdemo)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"request {self.client_address[0]} {format % args}", flush=True)


def serve(port: int, stop: threading.Event) -> None:
    with _Server(("::", port), _Handler) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
        thread.start()
        stop.wait()
        server.shutdown()
        thread.join()


def start(netns: str, port: int, log: Path) -> int:
    """The app as a process inside a pod; its pid."""
    return runner.spawn(netns, [sys.executable, "-P", "-m", "zt.lab.web", "--port", str(port)], log)


# -- client ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    local: str  # "ip:port" the client socket was bound to ("" if it never was)
    status: int  # 0: no response
    body: str
    error: str  # "" when a response arrived and the connection closed cleanly
    seconds: float


def _parse(data: bytes) -> tuple[int, str, bool]:
    """(status, body, complete): complete once the body holds Content-Length bytes."""
    head, sep, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split(b" ")
    status = int(line[1]) if sep and len(line) > 1 and line[1].isdigit() else 0
    length = next(
        (int(h.partition(b":")[2]) for h in head.split(b"\r\n")[1:]
         if h.lower().startswith(b"content-length:")),
        -1,
    )  # fmt: skip
    return status, body.decode(errors="replace"), status > 0 and len(body) >= length >= 0


def _get(host: str, port: int, path: str, timeout: float) -> Response:
    """Reads until the response is whole: whether the tunnel behind the socket then ends with a
    FIN or a reset (Envoy resets the CONNECT stream once it closed its side) is not the app's
    concern."""
    start = time.monotonic()
    local, data, error = "", b"", ""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        bound_ip, bound_port = sock.getsockname()[:2]
        local = f"[{bound_ip}]:{bound_port}" if ":" in bound_ip else f"{bound_ip}:{bound_port}"
        # Connection: close makes the server end the exchange (RFC 9112 §9.6)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while not _parse(data)[2] and (chunk := sock.recv(65536)):
            data += chunk
    except OSError as exc:
        error = exc.strerror or type(exc).__name__
    finally:
        sock.close()
    status, body, whole = _parse(data)
    if not whole:
        error = error or f"no whole HTTP response ({len(data)} bytes)"
    return Response(local, status, body, "" if whole else error, time.monotonic() - start)


def get(netns: str, host: str, port: int, path: str, *, timeout: float = 10.0) -> Response:
    """GET path from inside netns as a pod app would (an unmarked socket, so capture sees it)."""
    return run_in_netns(netns, lambda: _get(host, port, path, timeout), timeout=timeout + 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.lab.web")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"web listening on {args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
