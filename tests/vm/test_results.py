"""Per-kernel results: pytest's JUnit XML summarized, the table `make vm-test` prints, its status."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.vm.helpers import vm_py

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="12.5">
<testcase classname="tests.netns.test_inbound" name="test_a" time="1"/>
<testcase classname="tests.netns.test_inbound" name="test_b" time="1"/>
<testcase classname="tests.netns.test_outbound" name="test_c" time="1"><failure message="x"/></testcase>
<testcase classname="tests.packets.test_wire" name="test_d" time="1"><error message="y"/></testcase>
<testcase classname="tests.packets.test_wire" name="test_e" time="0"><skipped message="z"/></testcase>
</testsuite></testsuites>"""


def summary(n_pass: int, failures: list[str]) -> dict[str, object]:
    return {
        "passed": n_pass,
        "failed": len(failures),
        "errors": 0,
        "skipped": 0,
        "seconds": 3.0,
        "failures": failures,
    }


def result(kernel: str, kver: str, failures: list[str]) -> dict[str, object]:
    return {
        "kernel": kernel, "kver": kver, "accel": "tcg", "boot_to_ssh_s": [41.0, 44.0],
        "tiers": ["tests/netns"], "tests": summary(7, failures), "smoke": summary(9, []),
        "total_s": 200.0, "notes": [],
    }  # fmt: skip


def test_junit_summary_counts_each_outcome_and_names_failures(tmp_path: Path) -> None:
    xml = tmp_path / "tiers.xml"
    xml.write_text(JUNIT)
    out = vm_py("summarize", str(xml))
    assert out.returncode == 1
    got = json.loads(out.stdout)
    assert (got["passed"], got["failed"], got["errors"], got["skipped"]) == (2, 1, 1, 1)
    assert got["failures"] == [
        "tests.netns.test_outbound::test_c",
        "tests.packets.test_wire::test_d",
    ]
    assert got["seconds"] == 12.5


def test_unparseable_junit_is_an_error_naming_the_problem(tmp_path: Path) -> None:
    xml = tmp_path / "cut.xml"
    xml.write_text("<testsuites><testsuite")
    out = vm_py("summarize", str(xml))
    assert out.returncode == 1
    assert "junit xml: not parseable" in out.stderr


def write_results(cache: Path, *results: dict[str, object]) -> dict[str, str]:
    (cache / "results").mkdir(parents=True)
    for r in results:
        (cache / "results" / f"{r['kernel']}.json").write_text(json.dumps(r))
    return {**os.environ, "ZT_VM_CACHE": str(cache)}


def test_report_prints_one_row_per_kernel_and_passes_when_all_pass(tmp_path: Path) -> None:
    env = write_results(
        tmp_path, result("6.1", "6.1.0-56-amd64", []), result("6.12", "6.12.117+deb12-amd64", [])
    )
    out = vm_py("report", "6.1", "6.12", env=env)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("6.1")]
    assert len(rows) == 2
    assert "6.1.0-56-amd64" in rows[0] and rows[0].rstrip().endswith("PASS")
    assert "6.12.117+deb12-amd64" in rows[1] and "41/44" in rows[1]


def test_report_fails_and_names_the_failing_test_and_the_missing_kernel(tmp_path: Path) -> None:
    env = write_results(tmp_path, result("6.1", "6.1.0-56-amd64", ["tests.netns.test_x::test_y"]))
    out = vm_py("report", "6.1", "6.12", env=env)
    assert out.returncode == 1
    assert "FAIL" in out.stdout
    assert "6.1: FAILED tests.netns.test_x::test_y" in out.stdout
    assert "6.12: no result" in out.stdout
