"""Draw the ratio chart of docs/PERFORMANCE.md from saved bench reports (needs matplotlib, which is
not a dependency of zt: install it into the venv to regenerate the committed PNG).

    .venv/bin/python -m bench.chart OUT.png LABEL=REPORT.txt [LABEL=REPORT.txt ...]

Each REPORT.txt is the output of `python -m bench.hbone_bench` (the loopback pair) or of
`zt bench node` (the node path: its `RATIO node_*` lines); its `RATIO` lines are drawn as groups of
bars, one bar per report, against the targets. Node-path reports make a node-path chart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.report import RATIO_KEYS, ReportError, parse_machine_lines

# The targets; latency is "lower is better" (zt's added p50 / Envoy's ≤ 1.5).
TARGETS = {
    "throughput_up": 1.0,
    "throughput_down": 1.0,
    "tunnels_per_s": 1.0,
    "latency_p50_added": 1.5,
    "workers_scaling": 0.8,
    "capture_setup": 1.0,  # BPF set-up cost / iptables REDIRECT's: ≤ 1
}
KEYS = (*RATIO_KEYS, "capture_setup")
# The node path (`zt bench node`): zt against Envoy as the node proxy, in the same run.
NODE_TARGETS = {
    "node_throughput_up": 1.0,
    "node_throughput_down": 1.0,
    "node_conn_per_s": 1.0,
    "node_latency_p50_added": 1.5,  # lower is better
    "node_cpu_per_gb": 1.0,  # lower is better
}


def load(specs: list[str]) -> dict[str, dict[str, float]]:
    """`LABEL=PATH` arguments → {label: ratios}."""
    out: dict[str, dict[str, float]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise ReportError(f"report: got {spec!r}, expected LABEL=PATH")
        out[label] = parse_machine_lines(Path(path).read_text())
    return out


def draw(reports: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib  # noqa: PLC0415 (optional: only the chart needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    node = any(key.startswith("node_") for ratios in reports.values() for key in ratios)
    targets = NODE_TARGETS if node else TARGETS
    keys = list(targets)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(reports), 1)
    for i, (label, ratios) in enumerate(reports.items()):
        xs = [k + i * width for k in range(len(keys))]
        ax.bar(xs, [ratios.get(key, 0.0) for key in keys], width, label=label)
    for k, key in enumerate(keys):
        ax.hlines(targets[key], k - width / 2, k + 0.8 - width / 2, colors="black", linestyles="--")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys, fontsize=8)
    ax.set_ylabel("ratio (dashed: target; latency and CPU: lower is better)", fontsize=8)
    where = "node path: pod to pod across two captured nodes" if node else "HBONE pair, loopback"
    ax.set_title(f"zt vs Envoy 1.40, {where}, 2 cores (medians)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    draw(load(sys.argv[2:]), Path(sys.argv[1]))


if __name__ == "__main__":
    main()
