"""`zt bench dns`: one tiny real run through the CLI, every figure and ratio present and every
query answered (dnsmasq and zt's server both started and stopped by the run)."""

from __future__ import annotations

import json
import math
import signal

import pytest
from typer.testing import CliRunner

from cli.main import app
from zt.bench import dns as bench


@pytest.mark.root
def test_a_tiny_real_run_prints_every_ratio_and_loses_no_query() -> None:
    handler = signal.getsignal(signal.SIGTERM)  # the command sets its own
    try:
        done = CliRunner().invoke(app, ["bench", "dns", "--smoke", "--json"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert set(doc["ratios"]) == {f"dns_{m}_{t}" for m in bench.MODES for t in ("qps", "p50")}
    assert all(math.isfinite(r) and r > 0 for r in doc["ratios"].values())
    assert doc["failures"] == {"dnsmasq": 0, "zt": 0}
    assert all(doc["qps"][m]["zt"][0] > 0 for m in bench.MODES)


def test_report_lines() -> None:
    result = bench.Result()
    for mode in bench.MODES:
        for server, qps, p50 in (("zt", 50.0, 200.0), ("dnsmasq", 100.0, 100.0)):
            result.add("qps", mode, server, qps)
            result.add("p50_us", mode, server, p50)
    text = bench.render(result)
    assert "RATIO dns_mesh_qps 0.50" in text and "RATIO dns_mesh_p50 0.50" in text
