"""The bench's report arithmetic and its machine-readable lines (no timing is asserted)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest

from bench.hbone_bench import Variant, parse_variant
from bench.report import (
    RATIO_KEYS,
    ReportError,
    Results,
    machine_lines,
    parse_capture_lines,
    parse_machine_lines,
    ratios,
    summary,
    table,
)


def _results() -> Results:
    return {
        "direct": {"p50_us": [10.0, 20.0, 30.0]},
        "envoy": {
            "up_MB/s": [100.0, 200.0, 300.0],
            "down_MB/s": [400.0],
            "tunnels/s": [1000.0],
            "p50_us": [70.0],
        },
        "zt": {
            "up_MB/s": [50.0, 100.0, 400.0],
            "down_MB/s": [200.0],
            "tunnels/s": [500.0],
            "p50_us": [110.0],
            "workers_MB/s": [100.0],
            "KiB_per_idle_tunnel": [3.0, 5.0, 4.0],
        },
        "zt_x2": {"workers_MB/s": [180.0]},
    }


def test_ratios_are_zt_over_envoy_on_medians() -> None:
    got = ratios(_results(), workers=2)
    assert got["throughput_up"] == pytest.approx(0.5)  # 100 / 200
    assert got["throughput_down"] == pytest.approx(0.5)
    assert got["tunnels_per_s"] == pytest.approx(0.5)
    assert got["latency_p50_added"] == pytest.approx(1.8)  # (110-20) / (70-20)
    assert got["workers_scaling"] == pytest.approx(0.9)  # 180 / (2 * 100)


def test_missing_worker_mode_gives_nan_not_a_crash() -> None:
    results = _results()
    del results["zt_x2"]
    assert math.isnan(ratios(results, workers=2)["workers_scaling"])


def test_last_lines_round_trip_through_the_parser() -> None:
    lines = machine_lines(_results(), workers=2)
    assert [line.split()[1] for line in lines[:-1]] == list(RATIO_KEYS)
    assert lines[-1] == "RSS_PER_TUNNEL_KIB 4.00"
    parsed = parse_machine_lines("noise\nrep 1/3 done\n" + "\n".join(lines))
    assert parsed == {
        "throughput_up": 0.5,
        "throughput_down": 0.5,
        "tunnels_per_s": 0.5,
        "latency_p50_added": 1.8,
        "workers_scaling": 0.9,
        "rss_per_tunnel_kib": 4.0,
    }


def test_parser_names_the_bad_line() -> None:
    with pytest.raises(ReportError, match=r"throughput_up.*'fast'"):
        parse_machine_lines("RATIO throughput_up fast")


def test_table_shows_median_and_range() -> None:
    rows = table(_results())
    row = next(r for r in rows if r.startswith("zt ") and "up_MB/s" in r)
    assert row.split()[-2:] == ["100.0", "50.0..400.0"]


def test_capture_lines_give_the_bpf_over_iptables_ratio() -> None:
    capture = parse_capture_lines(
        "CAPTURE_SETUP_US plain 40.0\nCAPTURE_SETUP_US iptables 80.0\nCAPTURE_SETUP_US bpf 60.0\n"
    )
    assert capture == {"plain": 40.0, "iptables": 80.0, "bpf": 60.0}
    lines = machine_lines(_results(), workers=2, capture=capture)
    assert "RATIO capture_setup 0.750" in lines
    assert lines[-1].startswith("RSS_PER_TUNNEL_KIB ")  # still the last line


def test_capture_parser_names_the_bad_line() -> None:
    with pytest.raises(ReportError, match="bpf"):
        parse_capture_lines("CAPTURE_SETUP_US bpf slow")


def test_variant_specs_name_tree_and_loop() -> None:
    assert parse_variant("zt_base=asyncio:/tmp/base") == Variant(
        "zt_base", Path("/tmp/base"), "asyncio"
    )
    assert parse_variant("zt_uv=uvloop") == Variant("zt_uv", None, "uvloop")
    for bad in ("base=asyncio", "zt_x=trio", "zt_x"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            parse_variant(bad)


def test_summary_reports_cpu_per_gb_for_both_sides() -> None:
    results = _results()
    for mode, (client, server) in (("envoy", (1.0, 0.5)), ("zt", (2.25, 1.5))):
        results[mode] |= {
            "cpu_s_per_GB": [client + server],
            "cpu_client_s_per_GB": [client],
            "cpu_server_s_per_GB": [server],
        }
    lines = summary(results)
    assert "  client side   zt 2.25  envoy 1.00" in lines
    assert "  server side   zt 1.50  envoy 0.50" in lines
