"""The node bench's figures: medians with min..max per mode, same-run ratios, machine lines.

Pure functions over `Results` (mode -> metric -> one sample per repetition, NaN for a failed
one). A ratio is computed per repetition from that repetition's samples, then the median of those
is reported: modes measured back to back share the machine's state of the moment, which a ratio
of medians would not respect. The last lines of a report are exactly:

    RATIO node_throughput_up <zt/envoy>
    RATIO node_throughput_down <zt/envoy>
    RATIO node_conn_per_s <zt/envoy>
    RATIO node_latency_p50_added <zt/envoy>
    RATIO node_cpu_per_gb <zt/envoy>
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

Results = dict[str, dict[str, list[float]]]
Sample = dict[str, float]  # one mode's metrics in one repetition

# (column, unit heading, digits)
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("up_MB/s", "up MB/s", 0),
    ("down_MB/s", "down MB/s", 0),
    ("p50_us", "p50 µs", 1),
    ("p99_us", "p99 µs", 1),
    ("p50_added_us", "p50 added µs", 1),
    ("conn/s", "conn/s", 0),
    ("conn/s_c8", "conn/s (8)", 0),
    ("cpu_node1_s/GB", "CPU s/GB node1", 2),
    ("cpu_node2_s/GB", "CPU s/GB node2", 2),
    ("rss_node1_KiB/1k", "RSS KiB/1k conn node1", 0),
    ("rss_node2_KiB/1k", "RSS KiB/1k conn node2", 0),
)


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _cpu(s: Sample) -> float:
    return s.get("cpu_node1_s/GB", math.nan) + s.get("cpu_node2_s/GB", math.nan)


def _added(s: Sample, direct: Sample) -> float:
    return s.get("p50_us", math.nan) - direct.get("p50_us", math.nan)


# ratio name -> (a / b for one repetition), a and b the two modes' samples, d direct's
RATIOS: dict[str, Callable[[Sample, Sample, Sample], float]] = {
    "node_throughput_up": lambda a, b, d: _div(
        a.get("up_MB/s", math.nan), b.get("up_MB/s", math.nan)
    ),
    "node_throughput_down": lambda a, b, d: _div(
        a.get("down_MB/s", math.nan), b.get("down_MB/s", math.nan)
    ),
    "node_conn_per_s": lambda a, b, d: _div(a.get("conn/s", math.nan), b.get("conn/s", math.nan)),
    "node_latency_p50_added": lambda a, b, d: _div(_added(a, d), _added(b, d)),
    "node_cpu_per_gb": lambda a, b, d: _div(_cpu(a), _cpu(b)),
}
# not among the RATIO lines, shown on the pair lines
EXTRA_RATIOS: dict[str, Callable[[Sample, Sample, Sample], float]] = {
    "conn_per_s_c8": lambda a, b, d: _div(
        a.get("conn/s_c8", math.nan), b.get("conn/s_c8", math.nan)
    ),
    "p99": lambda a, b, d: _div(a.get("p99_us", math.nan), b.get("p99_us", math.nan)),
}


def median(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def reps(results: Results) -> int:
    return max((len(v) for metrics in results.values() for v in metrics.values()), default=0)


def sample(results: Results, mode: str, rep: int) -> Sample:
    """One mode's metrics in repetition `rep` (metrics measured once, like RSS, in every rep)."""
    out: Sample = {}
    for metric, values in results.get(mode, {}).items():
        if values:
            out[metric] = values[rep] if rep < len(values) else values[-1]
    return out


def pair_ratios(results: Results, a: str, b: str) -> dict[str, float]:
    """Median over repetitions of each ratio a/b (each repetition's own figures)."""
    out: dict[str, float] = {}
    n = reps(results)
    for name, fn in {**RATIOS, **EXTRA_RATIOS}.items():
        per_rep = [
            fn(sample(results, a, i), sample(results, b, i), sample(results, "direct", i))
            for i in range(n)
        ]
        out[name] = median(per_rep)
    return out


def with_added(results: Results) -> Results:
    """`p50_added_us` per repetition: the mode's p50 minus direct's in the same repetition."""
    out = {mode: dict(metrics) for mode, metrics in results.items()}
    direct = results.get("direct", {}).get("p50_us", [])
    for mode, metrics in out.items():
        if mode == "direct":
            continue
        p50 = metrics.get("p50_us", [])
        metrics["p50_added_us"] = [
            p - d for p, d in zip(p50, direct, strict=False) if not (math.isnan(p) or math.isnan(d))
        ]
    return out


def _cell(values: list[float], digits: int) -> str:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "-"
    mid = statistics.median(kept)
    if len(kept) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({min(kept):.{digits}f}..{max(kept):.{digits}f})"


def table(results: Results) -> str:
    """A markdown table: one row per mode, medians with min..max over repetitions."""
    full = with_added(results)
    head = "| mode | " + " | ".join(title for _, title, _ in COLUMNS) + " | failures |"
    rule = "|" + "---|" * (len(COLUMNS) + 2)
    rows = [head, rule]
    for mode, metrics in full.items():
        cells = [_cell(metrics.get(key, []), digits) for key, _, digits in COLUMNS]
        failures = int(sum(metrics.get("failures", [])))
        rows.append(f"| {mode} | " + " | ".join(cells) + f" | {failures} |")
    return "\n".join(rows)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def pair_lines(results: Results) -> list[str]:
    """One line per zt mode against Envoy (and each variant against zt) with every ratio."""
    modes = [m for m in results if m.startswith("zt")]
    pairs = [(m, "envoy") for m in modes] + [(m, "zt") for m in modes if m != "zt"]
    lines = []
    for a, b in pairs:
        if b not in results:
            continue
        got = pair_ratios(results, a, b)
        lines.append(f"PAIR {a}/{b} " + " ".join(f"{k}={_fmt(v)}" for k, v in got.items()))
    return lines


def ratio_lines(results: Results) -> list[str]:
    got = pair_ratios(results, "zt", "envoy")
    return [f"RATIO {name} {_fmt(got[name])}" for name in RATIOS]


def render(results: Results, header: list[str], proofs: list[str]) -> str:
    """The whole text report; its last five lines are the RATIO lines."""
    return "\n".join(
        [*header, "", table(results), "", *proofs, "", *pair_lines(results), *ratio_lines(results)]
    )


def document(results: Results, proofs: dict[str, object]) -> dict[str, object]:
    """The `--json` form: every sample, the medians, every pair's ratios and the proofs."""
    full = with_added(results)
    return {
        "samples": results,
        "medians": {m: {k: median(v) for k, v in metrics.items()} for m, metrics in full.items()},
        "ratios": pair_ratios(results, "zt", "envoy"),
        "pairs": {
            f"{a}/{b}": pair_ratios(results, a, b)
            for a in results
            if a.startswith("zt")
            for b in ("envoy", "zt")
            if b != a and b in results
        },
        "carried": proofs,
    }
