"""Connection set-up cost through BPF capture vs an iptables REDIRECT rule (issue 8's capture target).

Run as root, in its own process (one compiled Capture per process, DESIGN.md §6):

    .venv/bin/python -m bench.capture_bench [--count N]

In a pod netns + peer netns pair that this script creates and removes (tests/netns/topo.py), an app
in the pod connects to <peer ip>:8080 and the proxy's 15001 listener accepts it and reads the
original destination — the whole per-connection work of outbound capture. Three ways, one after
the other: `plain` (connect straight to the listener: the floor), `iptables` (nat OUTPUT REDIRECT,
SO_ORIGINAL_DST) and `bpf` (zt.capture connect4 mode, `Capture.original_destination`). Prints
`CAPTURE_SETUP_US <way> <median µs per connection>` lines. Every rule, link and netns is removed in
`finally`, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

from tests.netns.fixtures import open_listeners
from tests.netns.topo import Topology, build
from zt.capture import Capture, PodCapture, parse_ips
from zt.capture.netns import run_in_netns

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
APP_PORT = 8080
OrigDst = Callable[[socket.socket], tuple[str, int]]


def _iptables_orig(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack("!2xH4s8x", raw)
    return str(ipaddress.IPv4Address(packed)), port


def _no_orig(conn: socket.socket) -> tuple[str, int]:
    return conn.getsockname()[:2]  # type: ignore[no-any-return]


def connect_loop(
    topo: Topology, listener: socket.socket, dst: tuple[str, int], orig: OrigDst, count: int
) -> list[float]:
    """Seconds per connection (connect, accept, original destination, close) from inside the
    pod, `count` times or for at most 20 s. Checks each original destination."""

    def loop() -> list[float]:
        out: list[float] = []
        deadline = time.monotonic() + 20
        while len(out) < count and time.monotonic() < deadline:
            started = time.perf_counter()
            with socket.create_connection(dst, timeout=3) as app:
                conn, _ = listener.accept()
                with conn:
                    got = orig(conn)
            out.append(time.perf_counter() - started)
            del app
            if got[1] != dst[1]:
                raise RuntimeError(f"original destination: got {got}, expected port {dst[1]}")
        return out

    return run_in_netns(topo.pod, loop, timeout=60)


@contextlib.contextmanager
def _plain_listener(topo: Topology, port: int) -> Iterator[socket.socket]:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(1024)
        sock.settimeout(3)
        return sock

    sock = run_in_netns(topo.pod, make)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def _redirect_rule(topo: Topology) -> Iterator[None]:
    rule = ["-t", "nat", "-p", "tcp", "-d", topo.peer_ip4, "-j", "REDIRECT", "--to-ports", "15001"]
    cmd = ["ip", "netns", "exec", topo.pod, "iptables"]
    subprocess.run([*cmd, "-A", "OUTPUT", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run([*cmd, "-D", "OUTPUT", *rule], check=False)


def _bpf(topo: Topology, count: int) -> list[float]:
    cap = Capture.open("connect")
    try:
        listeners = open_listeners(topo, "connect")
        try:
            spec = PodCapture(topo.pod, topo.pod_path, parse_ips([topo.pod_ip4]), listeners)
            cap.enroll(spec)

            def orig(conn: socket.socket) -> tuple[str, int]:
                found = cap.original_destination(conn)
                return str(found.ip), found.port

            dst = (topo.peer_ip4, APP_PORT)
            return connect_loop(topo, listeners.outbound, dst, orig, count)
        finally:
            for sock in (listeners.outbound, listeners.inbound_plain, listeners.inbound_hbone):
                sock.close()
    finally:
        cap.close()


def measure(count: int) -> dict[str, float]:
    topo = build()
    try:
        out = {}
        with _plain_listener(topo, 15001) as listener:
            dst = (topo.pod_ip4, 15001)
            out["plain"] = connect_loop(topo, listener, dst, _no_orig, count)
            with _redirect_rule(topo):
                dst = (topo.peer_ip4, APP_PORT)
                out["iptables"] = connect_loop(topo, listener, dst, _iptables_orig, count)
        out["bpf"] = _bpf(topo, count)
        return {way: statistics.median(samples) * 1e6 for way, samples in out.items()}
    finally:
        topo.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    for way, micros in measure(args.count).items():
        print(f"CAPTURE_SETUP_US {way} {micros:.1f}")


if __name__ == "__main__":
    main()
