"""The node bench's measurements: every metric for every mode, interleaved, `reps` times."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zt.bench import loadgen
from zt.bench.benchlab import Bench, Progress, Route
from zt.bench.report import Results, Sample

MiB = 1024 * 1024
CONCURRENT = 8  # clients of the concurrent new-connection measurement


@dataclass(frozen=True)
class Sizes:
    reps: int
    bulk: int  # bytes of each upload and download
    pings: int  # 64-byte round trips per latency sample
    conn_seconds: float  # duration of each new-connections sample
    conn_limit: int  # at most this many connections per sample
    idle: int  # idle connections held for the RSS sample


FULL = Sizes(reps=5, bulk=256 * MiB, pings=3000, conn_seconds=3.0, conn_limit=30000, idle=1000)
QUICK = Sizes(reps=3, bulk=32 * MiB, pings=500, conn_seconds=0.5, conn_limit=5000, idle=1000)
SMOKE = Sizes(reps=1, bulk=16 * MiB, pings=20, conn_seconds=0.2, conn_limit=100, idle=20)


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """utime + stime of these processes, all their threads (/proc/<pid>/stat fields 14, 15)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: tuple[int, ...]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _timeout(sizes: Sizes) -> float:
    return 30.0 + sizes.bulk / MiB  # ≥ 1 MiB/s, or the sample fails


def measure_bulk(bench: Bench, route: Route, sizes: Sizes) -> Sample:
    """Upload then download `bulk` bytes on one connection; MB/s each and each node's CPU s/GB."""
    before = [cpu_seconds(p) for p in route.proxies]
    limit = _timeout(sizes)
    up = loadgen.in_pod(
        route.src_netns, lambda: loadgen.upload(route.dst, sizes.bulk, limit), limit + 5
    )
    bench.uploaded[route.mode] = bench.uploaded.get(route.mode, 0) + sizes.bulk
    down = loadgen.in_pod(
        route.src_netns, lambda: loadgen.download(route.dst, sizes.bulk, limit), limit + 5
    )
    after = [cpu_seconds(p) for p in route.proxies]
    gb = 2 * sizes.bulk / 1e9
    out = {"up_MB/s": sizes.bulk / 1e6 / up, "down_MB/s": sizes.bulk / 1e6 / down}
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        out[f"cpu_node{i + 1}_s/GB"] = (b - a) / gb
    if route.proxies:
        out["cpu_s/GB"] = sum(out[f"cpu_node{i + 1}_s/GB"] for i in range(len(route.proxies)))
    return out


def measure_latency(route: Route, sizes: Sizes) -> Sample:
    rtts = loadgen.in_pod(
        route.src_netns, lambda: loadgen.ping_pong(route.dst, sizes.pings, 30.0), 60.0
    )
    rtts.sort()
    return {
        "p50_us": statistics.median(rtts),
        "p99_us": rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)],
    }


def measure_connections(route: Route, sizes: Sizes, clients: int) -> float:
    """New connections per second (connect, 64 B echoed, close) with `clients` in parallel."""

    def one() -> int:
        return loadgen.new_connections(
            route.dst, sizes.conn_seconds, sizes.conn_limit // clients, 10.0
        )

    start = time.perf_counter()
    counts = loadgen.in_pod_parallel(route.src_netns, [one] * clients, sizes.conn_seconds + 30)
    return sum(counts) / (time.perf_counter() - start)


def measure_idle(route: Route, sizes: Sizes) -> Sample:
    """Each node's proxy RSS growth (KiB) per 1,000 idle connections held open through it."""
    before = [rss_kib(p) for p in route.proxies]
    with loadgen.held(route.src_netns, route.dst, sizes.idle, 10.0) as n:
        time.sleep(0.5)  # let the proxies' lazy allocations (buffers, stats) land
        after = [rss_kib(p) for p in route.proxies]
    return {
        f"rss_node{i + 1}_KiB/1k": (b - a) * 1000 / n
        for i, (a, b) in enumerate(zip(before, after, strict=True))
    }


def _warm(route: Route) -> None:
    """One connection through the path first: pools, certificates, first-use allocations."""
    loadgen.in_pod(route.src_netns, lambda: loadgen.new_connections(route.dst, 5.0, 3, 10.0), 30)


def run(bench: Bench, sizes: Sizes, progress: Progress) -> Results:
    """Every measurement for every mode, modes interleaved in alternating order, `reps` times."""
    modes = list(bench.routes)
    results: Results = {m: {} for m in modes}

    def add(mode: str, values: Sample) -> None:
        for key, value in values.items():
            results[mode].setdefault(key, []).append(value)

    def attempt(mode: str, keys: tuple[str, ...], fn: Callable[[Route], Sample]) -> None:
        try:
            add(mode, fn(bench.routes[mode]))
        except (loadgen.LoadError, OSError, TimeoutError) as exc:
            progress(f"  {mode}: a sample failed ({exc}); counted in `failures`")
            # NaN in every list the step fills: repetition i stays index i of each list
            add(mode, dict.fromkeys(keys, math.nan) | {"failures": 1.0})

    def bulk(r: Route) -> Sample:
        return measure_bulk(bench, r, sizes)

    def latency(r: Route) -> Sample:
        return measure_latency(r, sizes)

    def sequential(r: Route) -> Sample:
        return {"conn/s": measure_connections(r, sizes, 1)}

    def concurrent(r: Route) -> Sample:
        return {"conn/s_c8": measure_connections(r, sizes, CONCURRENT)}

    def idle(r: Route) -> Sample:
        return measure_idle(r, sizes)

    steps: list[tuple[tuple[str, ...], Callable[[Route], Sample]]] = [
        (("up_MB/s", "down_MB/s", "cpu_node1_s/GB", "cpu_node2_s/GB", "cpu_s/GB"), bulk),
        (("p50_us", "p99_us"), latency),
        (("conn/s",), sequential),
        (("conn/s_c8",), concurrent),
    ]
    for mode in modes:
        _warm(bench.routes[mode])
    for mode in modes:  # memory first, before bulk runs leave free heap to reuse
        attempt(mode, ("rss_node1_KiB/1k", "rss_node2_KiB/1k"), idle)
    for rep in range(sizes.reps):
        order = modes if rep % 2 == 0 else modes[::-1]
        started = time.monotonic()
        for keys, fn in steps:  # each metric for every mode back to back: same machine state
            for mode in order:
                attempt(mode, keys, fn)
        progress(
            f"rep {rep + 1}/{sizes.reps} ({' '.join(order)}): {time.monotonic() - started:.1f} s"
        )
    return results
