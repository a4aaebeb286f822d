"""`zt run --workers N` through a captured pod: workers=1 vs workers=2 (the worker lever of docs/PERFORMANCE.md).

Run as root: `.venv/bin/python -m bench.node_workers [--reps 3] [--seconds 3] [--mib 64]`.

Two labs (two nodes, two pods each) run side by side, one per worker count, so the measurements
interleave: each repetition measures the one lab, then the other (order alternating), while the
idle one waits. Paths: pod1-1 (node1, captured outbound) -> HBONE -> pod2-1 (node2, sk_lookup
inbound) -> its echo app.
  throughput  one connection, `--mib` MiB sent and echoed back (bytes moved each way / time)
  parallel    the same `--mib` MiB over `--streams` parallel connections (aggregate)
  tunnels/s   `--clients` client threads inside pod1-1, each connect + 64 B echo + close in a loop
              for `--seconds` s; every connection is a new capture lookup and a new HBONE tunnel
              on node1's pooled connections
  CPU         utime+stime of both nodes' zt processes per GiB echoed / per 1000 tunnels
  RSS         VmRSS of each node's leader and followers after the runs
The load generator runs on the same 2 cores as both nodes' workers: a worker count that wins here
wins with less CPU than a real node would have. Prints medians with min..max, then
`RATIO workers_node_throughput <w2/w1>`, `RATIO workers_node_parallel_throughput <w2/w1>`,
`RATIO workers_node_tunnels_per_s <w2/w1>` and `RSS_FOLLOWER_KIB <n>`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from zt.capture.bpfsys import setns
from zt.lab import control, mesh, runner
from zt.lab.state import LabState


@contextlib.contextmanager
def lab(name: str, workers: int, capture: str) -> Iterator[LabState]:
    try:
        yield control.up(
            control.UpOptions(name=name, capture=capture, node_args=("--workers", str(workers)))
        )
    finally:
        control.down(name)


def _enter(netns: str) -> None:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        setns(fd)  # this thread only; it ends with the measurement
    finally:
        os.close(fd)


def _in_netns(netns: str, fn: Callable[[], float], results: list[float]) -> threading.Thread:
    def run() -> None:
        _enter(netns)
        results.append(fn())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def throughput(state: LabState, mib: int, streams: int = 1) -> float:
    """Gbit/s of echoed payload over `streams` parallel connections (each byte crosses both
    ways); `mib` MiB in all."""
    src, dst = _pods(state)
    each = mib * 1024 * 1024 // streams

    def measure() -> float:
        with socket.create_connection((dst, mesh.APP_PORT), timeout=30) as sock:
            chunk = b"\xa5" * (256 * 1024)
            start = time.perf_counter()

            def send() -> None:
                sent = 0
                while sent < each:
                    sock.sendall(chunk[: each - sent])
                    sent += min(len(chunk), each - sent)
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            got = 0
            while data := sock.recv(1024 * 1024):
                got += len(data)
            sender.join(30)
            elapsed = time.perf_counter() - start
        assert got == each, f"echoed {got} of {each} bytes"
        return elapsed

    out: list[float] = []
    threads = [_in_netns(src, measure, out) for _ in range(streams)]
    for thread in threads:
        thread.join(120)
    assert len(out) == streams, "a stream failed"
    return each * streams * 8 / max(out) / 1e9


def tunnels_per_s(state: LabState, seconds: float, clients: int) -> float:
    src, dst = _pods(state)
    end = time.monotonic() + seconds

    def loop() -> float:
        n = 0
        while time.monotonic() < end:
            with socket.create_connection((dst, mesh.APP_PORT), timeout=10) as sock:
                sock.sendall(b"t" * 64)
                got = b""
                while len(got) < 64 and (data := sock.recv(64)):
                    got += data
            n += got == b"t" * 64
        return float(n)

    counts: list[float] = []
    threads = [_in_netns(src, loop, counts) for _ in range(clients)]
    for thread in threads:
        thread.join(seconds + 30)
    return sum(counts) / seconds


def _pods(state: LabState) -> tuple[str, str]:
    plan = state.plan
    src = next(p for p in plan.pods if p.name == "pod1-1")
    dst = next(p for p in plan.pods if p.name == "pod2-1")
    return src.netns, str(dst.ipv4)


def node_pids(state: LabState) -> dict[str, list[int]]:
    """Each node's zt processes: [leader, followers...]."""
    out = {}
    for node in state.plan.nodes:
        status, body = runner.http_get(node.netns, runner.ADMIN_PORT, "/config_dump")
        pids = [p.pid for p in state.procs if p.role == f"node:{node.name}"]
        if status == 200:
            pids += [int(w["pid"]) for w in json.loads(body).get("workers", [])]
        out[node.name] = pids
    return out


def rss_kib(state: LabState) -> dict[str, list[int]]:
    """VmRSS of each node's processes: [leader, followers...]."""
    return {node: [_rss(pid) for pid in pids] for node, pids in node_pids(state).items()}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f}  ({min(values):.2f}..{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--capture", default="connect", choices=("connect", "sklookup"))
    args = parser.parse_args()
    tag = os.getpid() % 1000
    results: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
    with lab(f"bw1{tag}", 1, args.capture) as one, lab(f"bw2{tag}", 2, args.capture) as two:
        labs = {1: one, 2: two}
        for rep in range(args.reps):
            order = (1, 2) if rep % 2 == 0 else (2, 1)
            for what in ("throughput", "parallel", "tunnels"):
                for workers in order:
                    state = labs[workers]
                    pids = [pid for node in node_pids(state).values() for pid in node]
                    cpu = cpu_seconds(pids)
                    start = time.perf_counter()
                    if what == "tunnels":
                        value = tunnels_per_s(state, args.seconds, args.clients)
                    else:
                        streams = args.streams if what == "parallel" else 1
                        value = throughput(state, args.mib, streams)
                    elapsed = time.perf_counter() - start
                    cpu = cpu_seconds(pids) - cpu
                    # CPU s of both nodes' zt processes per GiB echoed / per 1000 tunnels
                    work = (
                        value * elapsed / 1000
                        if what == "tunnels"
                        else args.mib / 1024 * 2  # each byte crosses the nodes twice (echo)
                    )
                    results[workers].setdefault(what, []).append(value)
                    results[workers].setdefault(f"cpu_{what}", []).append(cpu / work)
        rss = {w: rss_kib(labs[w]) for w in (1, 2)}
    print(f"capture={args.capture} reps={args.reps} clients={args.clients} cores={os.cpu_count()}")
    print(f"{'':22} {'workers=1':>26} {'workers=2':>26}")
    rows = (
        ("throughput", "Gbit/s"),
        ("parallel", "Gbit/s"),
        ("tunnels", "/s"),
        ("cpu_throughput", "s/GiB"),
        ("cpu_parallel", "s/GiB"),
        ("cpu_tunnels", "s/1k"),
    )
    for what, unit in rows:
        row = [_fmt(results[w][what]) for w in (1, 2)]
        print(f"{what + ' ' + unit:22} {row[0]:>26} {row[1]:>26}")
    for w in (1, 2):
        print(f"RSS KiB workers={w}: {rss[w]}")
    ratios = {
        what: statistics.median(
            b / a for a, b in zip(results[1][what], results[2][what], strict=True)
        )
        for what in ("throughput", "parallel", "tunnels")
    }
    followers = [kib for node in rss[2].values() for kib in node[1:]]
    print(f"RATIO workers_node_throughput {ratios['throughput']:.3f}")
    print(f"RATIO workers_node_parallel_throughput {ratios['parallel']:.3f}")
    print(f"RATIO workers_node_tunnels_per_s {ratios['tunnels']:.3f}")
    print(f"RSS_FOLLOWER_KIB {statistics.median(followers) if followers else 0:.0f}")


if __name__ == "__main__":
    main()
