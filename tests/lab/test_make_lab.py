"""`make lab` (it "passes from a fresh clone as root on this machine, twice in a row, leaving
nothing behind"): the real target (the fleet lab), run twice, then nothing of the lab is left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from zt.lab import topology
from zt.lab.state import state_dir

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def make_lab(*args: str) -> subprocess.CompletedProcess[str]:
    included = "lab.mk" in (ROOT / "Makefile").read_text()
    files = [] if included else ["-f", "Makefile", "-f", "lab.mk"]  # until the Makefile has it
    return subprocess.run(
        ["make", "--no-print-directory", *files, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_make_lab_twice_in_a_row_leaves_nothing() -> None:
    name = f"mk{os.getpid() % 10000}"
    try:
        for run in (1, 2):
            done = make_lab("lab", f"LAB_NAME={name}")
            assert done.returncode == 0, f"run {run}:\n{done.stdout}\n{done.stderr}"
            assert "scenarios as expected" in done.stdout and "not as expected" not in done.stdout
            assert "node link: only TLS to :15008" in done.stdout
            # the fleet lab (lab.mk's LAB_CONTROL=etcd) adds its rows
            assert "policy pushed to every node" in done.stdout and "etcd down" in done.stdout
            assert topology.leftovers(f"zt-{name}-") == [], f"run {run} left namespaces"
            assert not state_dir(name).exists()
            assert sorted(Path("/sys/fs/bpf").glob(f"zt-{name}-*")) == []
    finally:
        make_lab("lab-down", f"LAB_NAME={name}")


@pytest.mark.timeout(400)
def test_make_lab_keep_leaves_it_running_and_says_how_to_explore() -> None:
    name = f"mq{os.getpid() % 10000}"
    try:
        done = make_lab("lab", f"LAB_NAME={name}", "KEEP=1")
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert (
            "left running (KEEP=1)" in done.stdout and f"zt lab exec --name {name}" in done.stdout
        )
        ctl = f"zt-{name}-ctl"  # the fleet lab's control host
        assert ctl in topology.leftovers(f"zt-{name}-")
        assert len(topology.leftovers(f"zt-{name}-")) == len(
            topology.plan(name, control=True).namespaces
        )
    finally:
        down = make_lab("lab-down", f"LAB_NAME={name}")
        assert down.returncode == 0, down.stderr
    assert topology.leftovers(f"zt-{name}-") == [] and not state_dir(name).exists()
