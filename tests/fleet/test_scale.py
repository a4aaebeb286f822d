"""The fleet scale simulation (bench/fleet_scale.py), small: 100 nodes, each a real
EtcdMeshSource with its own client, list and watch, against one real etcd member. Asserts what
every node ends up holding, never a timing (`make bench-fleet` prints those)."""

from __future__ import annotations

import asyncio
import os

import pytest

from bench import fleet_scale
from bench.fleet_scale import Settings
from zt.config.loader import load_document

NODES = 100
UPDATES = 3


@pytest.fixture(scope="module")
def report() -> fleet_scale.Report:
    settings = Settings(
        nodes=NODES,
        workloads=200,
        updates=UPDATES,
        procs=2,
        base=0.2,
        alone=1,
        idle=0.5,
        deadline=90,
    )
    return asyncio.run(fleet_scale.run(settings))


def test_mesh_shape_and_marks() -> None:
    """The generated meshes validate like a file, and a snapshot says which update it holds."""
    for update in (0, 3):
        snapshot = load_document(fleet_scale.mesh_document(7, 120, update), "gen.json")
        assert fleet_scale.mark_of(snapshot) == update
        assert len(snapshot.workloads) == 120
        assert {w.node for w in snapshot.workloads} == {fleet_scale.node_name(i) for i in range(7)}
    changed = fleet_scale.changed_workload(3, 120)
    assert snapshot.by_uid[f"ns-{changed % 20:02d}/wl-{changed}"].service_account == "upd-3"


def test_every_node_applies_every_update_once(report: fleet_scale.Report) -> None:
    assert report.updates_done == UPDATES
    names = [node["name"] for node in report.nodes]
    assert sorted(names) == [fleet_scale.node_name(i) for i in range(NODES)]
    warm = report.first_mark + 1
    for node in report.nodes:
        marks = [mark for mark, _ in node["swaps"]]
        assert marks == [warm, *report.marks], node["name"]  # each once, in push order
        assert node["revision"] == report.final_revision, node["name"]
        assert node["synced"] is True, node["name"]
    assert len(report.push_to_apply()) == NODES * UPDATES


def test_figures_and_lines(report: fleet_scale.Report) -> None:
    figures = fleet_scale.figures(report)
    assert figures["nodes"] == NODES and figures["pairs"] == NODES * UPDATES
    assert figures["update_bytes"] > 0 and figures["rss_per_node_kib"] > 0
    for line in fleet_scale.lines(report):
        head, *pairs = line.split()
        assert head == "FLEET_SCALE" and pairs
        assert all(len(pair.split("=")) == 2 for pair in pairs), line


def test_leaves_no_process(report: fleet_scale.Report) -> None:
    """etcd and the node processes were our children: none of them is still running."""
    assert report.pids
    assert not [pid for pid in report.pids if _running_child(pid)]


def _running_child(pid: int) -> bool:
    """A live child of this process with that pid (a reused pid belongs to someone else)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return False
    return int(ppid) == os.getpid() and state != "Z"
