"""`make lab` (it "passes from a fresh clone as root on this machine, twice in a row, leaving
nothing behind"): the real target (the fleet lab with a waypoint), first with KEEP=1 (left running, with what a user
then sees: status, the mesh in etcd, a push), then again in a row (which first removes the kept
lab), then nothing of either run is left."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.lab.test_lab import assert_nothing_left, zt
from zt.lab import runner, topology

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def make_lab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip


def assert_rows(done: subprocess.CompletedProcess[str], run: str) -> None:
    assert done.returncode == 0, f"{run}:\n{done.stdout}\n{done.stderr}"
    assert "scenarios as expected" in done.stdout and "not as expected" not in done.stdout
    assert "node link: only TLS to :15008" in done.stdout
    # the fleet lab (lab.mk's LAB_CONTROL=etcd) adds its rows, the waypoint (LAB_WAYPOINT=1) its own
    assert "policy pushed to every node" in done.stdout and "etcd down" in done.stdout
    assert "waypoint L7 allow" in done.stdout and "waypoint L7 deny" in done.stdout


def status_and_config(name: str, tmp_path: Path) -> list[int]:
    """What a user of the kept fleet lab sees; returns every pid the lab runs."""
    st = json.loads(zt("lab", "status", "--name", name, "--json").stdout)
    ctl = st["control"]
    assert ctl["mode"] == "etcd" and ctl["netns"] == f"zt-{name}-ctl"
    assert [m["name"] for m in ctl["etcd"]] == ["etcd1", "etcd2", "etcd3"]
    assert all(runner.alive(m["pid"]) and m["endpoint"].startswith("https://") for m in ctl["etcd"])
    assert runner.alive(ctl["signer"]["pid"]) and ctl["ca_dir"].endswith("/ca")
    assert oct(Path(ctl["etcd_password_file"]).stat().st_mode & 0o777) == "0o600"
    assert all(Path(n["state_dir"], "node.key").exists() and n["ready"] for n in st["nodes"])
    assert runner.alive(st["waypoint"]["pid"])

    got = zt("lab", "config", "get", "--name", name)
    assert got.returncode == 0 and "# revision " in got.stdout, got.stderr
    doc = yaml.safe_load(got.stdout)
    doc["policies"] = []
    for workload in doc["workloads"]:  # the web pods name the waypoint's ALLOW policy
        workload.pop("authorizationPolicies", None)
    new = tmp_path / "mesh.yaml"
    new.write_text(yaml.safe_dump(doc))
    pushed = zt("lab", "config", "push", "--name", name, str(new))
    assert pushed.returncode == 0 and "pushed at revision" in pushed.stdout, pushed.stderr
    again = zt("lab", "config", "get", "--name", name)
    assert yaml.safe_load(again.stdout)["policies"] == []
    return (
        [m["pid"] for m in ctl["etcd"]]
        + [ctl["signer"]["pid"], st["waypoint"]["pid"]]
        + [n["pid"] for n in st["nodes"]]
    )


@pytest.mark.timeout(600)
def test_make_lab_kept_then_again_in_a_row_leaves_nothing(tmp_path: Path) -> None:
    name = f"mk{os.getpid() % 10000}"
    try:
        kept = make_lab("lab", f"LAB_NAME={name}", "KEEP=1")
        assert_rows(kept, "KEEP=1 run")
        assert "left running (KEEP=1)" in kept.stdout
        assert f"zt lab exec --name {name}" in kept.stdout
        namespaces = topology.leftovers(f"zt-{name}-")
        assert f"zt-{name}-ctl" in namespaces  # the fleet lab's control host
        assert len(namespaces) == len(topology.plan(name, control=True, waypoint=True).namespaces)
        first_pids = status_and_config(name, tmp_path)

        again = make_lab("lab", f"LAB_NAME={name}")  # removes the kept lab, then a fresh one
        assert_rows(again, "second run")
        assert_nothing_left(name, tuple(first_pids))
    finally:
        down = make_lab("lab-down", f"LAB_NAME={name}")
        assert down.returncode == 0, down.stderr
    assert_nothing_left(name)
