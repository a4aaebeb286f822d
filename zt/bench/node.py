"""`zt bench node`: the path pods take, measured through zt and through Envoy as the node proxy.

zt.bench.benchlab builds the lab (one pod pair per mode on the same two nodes: direct, envoy, zt,
and zt_<name> per `--variant`), zt.bench.measure takes every measurement for every mode, the
modes interleaved in alternating order, `reps` times, and zt.bench.proof checks that each mode
carried the traffic the way it claims: a bench that silently measured direct would be worthless.
zt.bench.report turns the samples into medians and same-run ratios.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from zt.bench import envoy_node, loadgen
from zt.bench.benchlab import Progress, Variant, lab
from zt.bench.measure import CONCURRENT, MiB, Sizes, run
from zt.bench.proof import Carried, counters, prove
from zt.bench.report import Results
from zt.errors import UsageError


@dataclass(frozen=True)
class Options:
    sizes: Sizes
    envoy: Path | None = None  # None: the `envoy` next to this Python
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class Outcome:
    results: Results
    carried: tuple[Carried, ...]
    header: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.carried)


def bench_node(opts: Options, progress: Progress) -> Outcome:
    """Build the lab, measure every mode, prove each carried its bytes, remove the lab."""
    if os.geteuid() != 0:
        raise UsageError(
            f"zt bench node: got uid {os.geteuid()}, expected root (namespaces, BPF capture)"
        )
    envoy = envoy_node.find_envoy(opts.envoy)
    sizes = opts.sizes
    started = time.monotonic()
    with lab(envoy, opts.variants, progress) as bench:
        before = counters(bench)
        results = run(bench, sizes, progress)
        carried = prove(bench, before, counters(bench))
        routes = [
            f"  {r.mode}: {Path(r.src_netns).name} {r.src_ip} -> {r.dst_ip}:{loadgen.PORT}"
            f" (proxy pids {[list(p) for p in r.proxies]})"
            for r in bench.routes.values()
        ]
    progress(f"done in {time.monotonic() - started:.0f} s")
    header = (
        f"zt bench node: {sizes.reps} reps, bulk {sizes.bulk // MiB} MiB each way, {sizes.pings}"
        f" pings, new connections {sizes.conn_seconds:g} s (1 and {CONCURRENT} clients),"
        f" {sizes.idle} idle connections; cores {os.cpu_count()}",
        *routes,
        *(f"  variant zt_{v.name}: {v.tree}" for v in opts.variants),
    )
    return Outcome(results, tuple(carried), header)
