"""Connection set-up cost through BPF capture vs an iptables REDIRECT rule (docs/PERFORMANCE.md's capture target).

Run as root, in its own process (one compiled Capture per process, docs/design.md §6):

    .venv/bin/python -m bench.capture_bench [--count N] [--rounds R] [--kernel-stats]

An app in a pod netns connects to <peer ip>:8080 and the proxy's 15001 listener accepts it and
reads the original destination — the whole per-connection work of outbound capture. Three ways:
`plain` (connect straight to the listener: the floor), `iptables` (nat OUTPUT REDIRECT,
SO_ORIGINAL_DST) and `bpf` (zt.capture connect4 mode, `Capture.original_destination`).

Fairness, because the differences are a few µs in ~60 µs:
- each way has its own fresh pod netns (tests/netns/topo.py), so no way pays for another's state
  (the iptables rule leaves conntrack hooks in its netns; TIME_WAIT sockets pile up per netns);
- every way accepts on the same kind of socket: zt's marked dual-stack listener;
- the ways are interleaved: R rounds, each running every way (order rotated per round) for N
  connections; BPF capture is attached only during its own turn, so plain and iptables
  connections run no BPF program at all.

Prints a table (median of the round medians, min..max over rounds, per-round bpf/iptables ratio)
and the machine-readable lines `CAPTURE_SETUP_US <way> <µs>` (read by bench/report.py
`parse_capture_lines`, which bench/hbone_bench.py turns into `RATIO capture_setup`), then
`RATIO capture_setup <bpf/iptables>` itself. --kernel-stats adds one more bpf pass with the
kernel's BPF run-time statistics on (BPF_ENABLE_STATS, scoped to this process) and prints
`BPF_PROG <program> <runs per connection> <ns per run> <ns per connection>`. Every rule, link and
netns is removed in `finally`, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.netns.fixtures import open_listeners
from tests.netns.topo import Topology, build
from zt.capture import Capture, ListenerSockets, PodCapture, bpfsys, loader, parse_ips
from zt.capture.netns import open_listener, run_in_netns

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
APP_PORT = 8080
WAYS = ("plain", "iptables", "bpf")
OrigDst = Callable[[socket.socket], tuple[str, int]]
Session = Callable[[], contextlib.AbstractContextManager[OrigDst]]


def _iptables_orig(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack("!2xH4s8x", raw)
    return str(ipaddress.IPv4Address(packed)), port


def _no_orig(conn: socket.socket) -> tuple[str, int]:
    host, port = conn.getsockname()[:2]
    return str(host), int(port)


def connect_loop(
    topo: Topology, listener: socket.socket, dst: tuple[str, int], orig: OrigDst, count: int
) -> list[float]:
    """Seconds per connection (connect, accept, original destination, close) from inside the
    pod, `count` times or for at most 20 s. Checks each original destination."""
    want_port = APP_PORT if dst[1] != 15001 else 15001

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
            if got[1] != want_port:
                raise RuntimeError(f"original destination: got {got}, expected port {want_port}")
        return out

    return run_in_netns(topo.pod, loop, timeout=60)


@dataclass
class Way:
    """One way of capturing: where its app runs, where it connects, how it asks for the original
    destination (inside a per-round session: the bpf way attaches capture only for its turn)."""

    name: str
    topo: Topology
    listener: socket.socket
    dst: tuple[str, int]
    session: Session


@contextlib.contextmanager
def _fixed(orig: OrigDst) -> Iterator[OrigDst]:
    yield orig


@contextlib.contextmanager
def _redirect_rule(topo: Topology) -> Iterator[None]:
    rule = ["-t", "nat", "-p", "tcp", "-d", topo.peer_ip4, "-j", "REDIRECT", "--to-ports", "15001"]
    cmd = ["ip", "netns", "exec", topo.pod, "iptables"]
    subprocess.run([*cmd, "-A", "OUTPUT", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run([*cmd, "-D", "OUTPUT", *rule], check=False)


def _close_all(listeners: ListenerSockets) -> None:
    for sock in (listeners.outbound, listeners.inbound_plain, listeners.inbound_hbone):
        sock.close()


def _bpf_session(topo: Topology, listeners: ListenerSockets) -> Session:
    @contextlib.contextmanager
    def session() -> Iterator[OrigDst]:
        cap = Capture.open("connect")  # compiled once per process; attach + enroll per turn
        try:
            cap.enroll(PodCapture(topo.pod, topo.pod_path, parse_ips([topo.pod_ip4]), listeners))

            def orig(conn: socket.socket) -> tuple[str, int]:
                found = cap.original_destination(conn)
                return str(found.ip), found.port

            yield orig
        finally:
            cap.close()

    return session


@contextlib.contextmanager
def _topology() -> Iterator[Topology]:
    topo = build()
    try:
        yield topo
    finally:
        topo.remove()


@contextlib.contextmanager
def _listener(topo: Topology) -> Iterator[socket.socket]:
    """zt's marked dual-stack 15001 listener; the same accept path for every way (a timeout
    polls before accept)."""
    sock = open_listener(topo.pod, 15001)
    try:
        sock.settimeout(3)
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def _plain_way() -> Iterator[Way]:
    with _topology() as topo, _listener(topo) as sock:
        yield Way("plain", topo, sock, (topo.pod_ip4, 15001), lambda: _fixed(_no_orig))


@contextlib.contextmanager
def _iptables_way() -> Iterator[Way]:
    with _topology() as topo, _listener(topo) as sock, _redirect_rule(topo):
        dst = (topo.peer_ip4, APP_PORT)
        yield Way("iptables", topo, sock, dst, lambda: _fixed(_iptables_orig))


@contextlib.contextmanager
def _bpf_way() -> Iterator[Way]:
    with _topology() as topo:
        listeners = open_listeners(topo, "connect")
        try:
            listeners.outbound.settimeout(3)
            dst = (topo.peer_ip4, APP_PORT)
            yield Way("bpf", topo, listeners.outbound, dst, _bpf_session(topo, listeners))
        finally:
            _close_all(listeners)


@contextlib.contextmanager
def _ways() -> Iterator[list[Way]]:
    """The three ways, each in its own fresh pod netns with its own 15001 listener."""
    with _plain_way() as plain, _iptables_way() as iptables, _bpf_way() as bpf:
        yield [plain, iptables, bpf]


def run_round(way: Way, count: int) -> list[float]:
    with way.session() as orig:
        return connect_loop(way.topo, way.listener, way.dst, orig, count)


def measure(count: int, rounds: int) -> dict[str, list[float]]:
    """Per way, the median µs per connection of each round."""
    out: dict[str, list[float]] = {name: [] for name in WAYS}
    with _ways() as ways:
        for r in range(rounds):
            for way in ways[r % len(ways) :] + ways[: r % len(ways)]:
                out[way.name].append(statistics.median(run_round(way, count)) * 1e6)
    return out


def kernel_stats(count: int) -> dict[str, tuple[float, float]]:
    """One more bpf pass with BPF run-time statistics on: program -> (runs, ns) per connection.
    The programs are linked at the cgroup root, so other processes' sockets add a little."""
    progs = loader.load().prog_fds
    with _bpf_way() as bpf, bpf.session() as orig:
        stats_fd = bpfsys.enable_stats()
        try:
            before = {name: bpfsys.prog_run_stats(fd) for name, fd in progs.items()}
            done = len(connect_loop(bpf.topo, bpf.listener, bpf.dst, orig, count))
            after = {name: bpfsys.prog_run_stats(fd) for name, fd in progs.items()}
        finally:
            os.close(stats_fd)
    out = {}
    for name in progs:
        (ns0, runs0), (ns1, runs1) = before[name], after[name]
        out[name] = ((runs1 - runs0) / done, (ns1 - ns0) / done)
    return out


def report(rounds: dict[str, list[float]], count: int) -> list[str]:
    n = len(rounds["bpf"])
    lines = [
        f"capture set-up, µs per connection ({count} connections x {n} rounds, interleaved;"
        " median of round medians, min..max over rounds)"
    ]
    medians = {way: statistics.median(values) for way, values in rounds.items()}
    for way, values in rounds.items():
        lines.append(f"  {way:9s} {medians[way]:7.1f}  {min(values):.1f}..{max(values):.1f}")
    per_round = [b / i for b, i in zip(rounds["bpf"], rounds["iptables"], strict=True)]
    lines.append(
        f"  bpf/iptables per round: median {statistics.median(per_round):.3f},"
        f" {min(per_round):.3f}..{max(per_round):.3f}"
    )
    lines += [f"CAPTURE_SETUP_US {way} {us:.1f}" for way, us in medians.items()]
    lines.append(f"RATIO capture_setup {medians['bpf'] / medians['iptables']:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="connections per way per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernel-stats", action="store_true", help="per-program BPF run time")
    args = parser.parse_args()
    for line in report(measure(args.count, args.rounds), args.count):
        print(line, flush=True)
    if args.kernel_stats:
        for name, (runs, ns) in kernel_stats(args.count).items():
            per_run = ns / runs if runs else 0.0
            print(f"BPF_PROG {name} {runs:.2f} {per_run:.0f} {ns:.0f}")


if __name__ == "__main__":
    main()
