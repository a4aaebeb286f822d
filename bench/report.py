"""The bench's report: medians with min..max, the target ratios, and its machine-readable lines.

Pure functions over `Results` (mode → metric → samples), so tests can check the parsing and the
arithmetic without running a benchmark. The last lines of a run are, one per target:
`RATIO throughput_up <zt/envoy>`, `RATIO throughput_down …`, `RATIO tunnels_per_s …`,
`RATIO latency_p50_added …`, `RATIO workers_scaling …`, `RSS_PER_TUNNEL_KIB <n>`.
"""

from __future__ import annotations

import math
import statistics

Results = dict[str, dict[str, list[float]]]

METRICS = (
    "MB/s", "up_MB/s", "down_MB/s", "cpu_s_per_GB", "cpu_client_s_per_GB", "cpu_server_s_per_GB",
    "p50_us", "p99_us", "tunnels/s",
    "cpu_ms_per_tunnel", "handshakes/s", "KiB_per_idle_tunnel", "workers_MB/s", "failures",
)  # fmt: skip
RATIO_KEYS = (
    "throughput_up", "throughput_down", "tunnels_per_s", "latency_p50_added", "workers_scaling",
)  # fmt: skip


class ReportError(ValueError):
    """A report line that does not have the machine-readable form."""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def medians(results: Results) -> dict[str, dict[str, float]]:
    return {mode: {m: median(v.get(m, [])) for m in METRICS} for mode, v in results.items()}


def ratios(results: Results, workers: int) -> dict[str, float]:
    """The targets (docs/PERFORMANCE.md). `workers_scaling` = aggregate through `workers` worker processes /
    (`workers` times the same load through one worker)."""
    med = medians(results)
    d, e, z = med["direct"], med["envoy"], med["zt"]
    one = med.get("zt", {}).get("workers_MB/s", math.nan)
    many = med.get(f"zt_x{workers}", {}).get("workers_MB/s", math.nan)
    return {
        "throughput_up": _div(z["up_MB/s"], e["up_MB/s"]),
        "throughput_down": _div(z["down_MB/s"], e["down_MB/s"]),
        "tunnels_per_s": _div(z["tunnels/s"], e["tunnels/s"]),
        "latency_p50_added": _div(z["p50_us"] - d["p50_us"], e["p50_us"] - d["p50_us"]),
        "workers_scaling": _div(many, workers * one),
    }


def parse_capture_lines(text: str) -> dict[str, float]:
    """`CAPTURE_SETUP_US <way> <µs>` lines of bench/capture_bench.py, as {way: µs}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["CAPTURE_SETUP_US"] and len(words) == 3:
            try:
                out[words[1]] = float(words[2])
            except ValueError:
                raise ReportError(f"{line!r}: expected µs after {words[1]}") from None
    return out


def machine_lines(
    results: Results, workers: int, capture: dict[str, float] | None = None
) -> list[str]:
    """The last lines of a report. With a capture measurement, `RATIO capture_setup` is BPF's
    connection set-up cost / iptables REDIRECT's (target: ≤ 1)."""
    values = ratios(results, workers)
    if capture:
        values["capture_setup"] = _div(
            capture.get("bpf", math.nan), capture.get("iptables", math.nan)
        )
    lines = [f"RATIO {k} {v:.3f}" for k, v in values.items()]
    rss = median(results["zt"].get("KiB_per_idle_tunnel", []))
    return [*lines, f"RSS_PER_TUNNEL_KIB {rss:.2f}"]


def parse_machine_lines(text: str) -> dict[str, float]:
    """The `RATIO …` / `RSS_PER_TUNNEL_KIB …` lines of a report, as {name: value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["RATIO"] and len(words) == 3:
            name, value = words[1], words[2]
        elif words[:1] == ["RSS_PER_TUNNEL_KIB"] and len(words) == 2:
            name, value = "rss_per_tunnel_kib", words[1]
        else:
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise ReportError(f"{line!r}: expected a number after {name}, got {value!r}") from None
    return out


def table(results: Results) -> list[str]:
    """One row per mode and metric: median and min..max of the repetitions."""
    lines = [f"{'mode':10}{'metric':>22}{'median':>12}   min..max"]
    for mode, values in results.items():
        for metric in METRICS:
            samples = values.get(metric, [])
            if samples:
                lines.append(
                    f"{mode:10}{metric:>22}{median(samples):>12.1f}   "
                    f"{min(samples):.1f}..{max(samples):.1f}"
                )
    return lines


def summary(results: Results) -> list[str]:
    """Human-readable ratios besides the targets (CPU, handshakes, p99)."""
    med = medians(results)
    d, e, z = med["direct"], med["envoy"], med["zt"]
    return [
        f"bulk echo       zt/envoy {_div(z['MB/s'], e['MB/s']):.2f}",
        f"added p50 µs    zt {z['p50_us'] - d['p50_us']:.0f}  envoy {e['p50_us'] - d['p50_us']:.0f}",
        f"added p99 µs    zt {z['p99_us'] - d['p99_us']:.0f}  envoy {e['p99_us'] - d['p99_us']:.0f}",
        f"CPU s/GB        zt {z['cpu_s_per_GB']:.2f}  envoy {e['cpu_s_per_GB']:.2f}",
        f"  client side   zt {z['cpu_client_s_per_GB']:.2f}  envoy {e['cpu_client_s_per_GB']:.2f}",
        f"  server side   zt {z['cpu_server_s_per_GB']:.2f}  envoy {e['cpu_server_s_per_GB']:.2f}",
        f"CPU ms/tunnel   zt {z['cpu_ms_per_tunnel']:.2f}  envoy {e['cpu_ms_per_tunnel']:.2f}",
        f"handshakes/s    zt/envoy {_div(z['handshakes/s'], e['handshakes/s']):.2f}",
    ]
