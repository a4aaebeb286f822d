"""Draw the ratio chart of docs/PERFORMANCE.md from saved bench reports (needs matplotlib, which is
not a dependency of zt: install it into the venv to regenerate the committed PNG).

    .venv/bin/python -m bench.chart OUT.png LABEL=REPORT.txt [LABEL=REPORT.txt ...]

Each REPORT.txt is the output of `python -m bench.hbone_bench`; its `RATIO` lines are drawn as
groups of bars, one bar per report, against the targets.
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

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(reports), 1)
    for i, (label, ratios) in enumerate(reports.items()):
        xs = [k + i * width for k in range(len(KEYS))]
        ax.bar(xs, [ratios.get(key, 0.0) for key in KEYS], width, label=label)
    for k, key in enumerate(KEYS):
        ax.hlines(TARGETS[key], k - width / 2, k + 0.8 - width / 2, colors="black", linestyles="--")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(KEYS))], list(KEYS), fontsize=8)
    ax.set_ylabel("ratio (dashed: target; latency: lower is better)", fontsize=8)
    ax.set_title("zt vs Envoy 1.40 HBONE pair, loopback, 2 cores (medians)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    draw(load(sys.argv[2:]), Path(sys.argv[1]))


if __name__ == "__main__":
    main()
