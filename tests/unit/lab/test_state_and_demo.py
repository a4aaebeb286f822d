"""Lab state on disk, option checks and the demo's judging/table, without namespaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zt.errors import UsageError
from zt.lab import control, demo, demodriver, mesh, topology
from zt.lab import state as lab_state
from zt.lab.apps import Exchange
from zt.lab.logs import AccessRecord
from zt.lab.state import LabState, LabStateError, Proc, same_process, start_time

ID = "spiffe://cluster.local/ns/lab/sa/sa-"


def test_state_round_trips_and_tracks_processes_by_pid_and_start_time() -> None:
    me = Proc("node:node1", os.getpid(), start_time(os.getpid()) or 0, "/x.log")
    state = LabState("t", 2, 2, "connect", "/run/zt/lab-t").with_proc(me)
    again = LabState.from_json(state.to_json(), "mem")
    assert again == state and again.node_proc("node1") == me
    assert same_process(me)
    assert not same_process(Proc("app:x", os.getpid(), me.start_time + 1, ""))
    assert state.with_proc(me).procs == (me,) and state.without_role("node:node1").procs == ()
    assert state.plan.nodes[1].netns == "zt-t-node2"
    with pytest.raises(LabStateError, match="mem"):
        LabState.from_json("{nope", "mem")


def test_bad_options_name_the_flag() -> None:
    with pytest.raises(UsageError, match="--capture: got 'iptables'"):
        control.check_options(control.UpOptions(capture="iptables"))
    with pytest.raises(UsageError, match="--name"):
        control.check_options(control.UpOptions(name="a b"))
    with pytest.raises(UsageError, match="--nodes/--pods"):
        control.check_options(control.UpOptions(nodes=0))


def test_exec_targets_are_pods_nodes_and_the_outside_host() -> None:
    state = LabState("t", 2, 2, "connect", "/tmp/none")
    assert control.netns_of(state, "pod2-1") == "zt-t-pod2-1"
    assert control.netns_of(state, "ext") == "zt-t-ext"
    with pytest.raises(control.UnknownPod, match="pod9"):
        control.netns_of(state, "pod9")


def _rec(**fields: str) -> AccessRecord:
    return AccessRecord({k.replace("_", "."): v for k, v in fields.items()})


def test_scenarios_cover_the_issue_list_and_judging_uses_both_sides() -> None:
    lab = topology.plan("t", 2, 2)
    names = [s.name for s in demo.scenarios(lab)]
    assert names[0] == "cross-node HBONE" and "service VIP" in names and "passthrough" in names
    assert "DNS: service by name" in names
    sc = demo.scenarios(lab)[0]
    driver = demodriver.Driver(LabState("t", 2, 2, "connect", "/tmp/none"), lab, b"M")
    ex = Exchange("10.1.0.2:5", 10, b"M" * 10, "", 0.01)
    out = AccessRecord(
        {
            "protocol": "hbone",
            "src.identity": ID + "pod1-1",
            "dst.identity": ID + "pod2-1",
            "response_flags": "-",
        }
    )
    inb = AccessRecord(
        {
            "src.identity": ID + "pod1-1",
            "dst.identity": ID + "pod2-1",
            "bytes_recv": "10",
            "response_flags": "-",
        }
    )
    row = driver.judge(sc, ex, out, inb)
    assert row.ok and row.source_side == "sa-pod1-1 -> sa-pod2-1", row
    wrong = AccessRecord({**inb.fields, "src.identity": ID + "pod1-2"})
    assert not driver.judge(sc, ex, out, wrong).ok
    assert "no inbound access record" in driver.judge(sc, ex, out, None).detail
    refused = Exchange("10.1.0.2:6", 10, b"", "Connection reset by peer", 0.01)
    assert not driver.judge(sc, refused, out, inb).ok


def test_table_has_one_row_per_scenario_and_failed_lists_them() -> None:
    rows = [
        demodriver.Row("a", "p1 -> q", "x -> y", "x -> y", "1/1", True, "out flags=-"),
        demodriver.Row("bb", "p2 -> q", "-", "-", "0/0", False, "no echo"),
    ]
    text = demo.table(rows)
    assert text.splitlines()[0].split() == [
        "#",
        "scenario",
        "path",
        "source",
        "node",
        "saw",
        "dest",
        "node",
        "saw",
        "bytes",
        "verdict",
    ]
    assert "PASS" in text and "FAIL" in text and "no echo" in text
    assert demo.failed(rows) == [rows[1]]
    with pytest.raises(UsageError, match="2 nodes"):
        demo.scenarios(topology.plan("t", 1, 2))


def test_mesh_ips_leave_out_the_tcp_workload() -> None:
    lab = topology.plan("t", 2, 2)
    ips = demo.mesh_ips(lab)
    assert str(mesh.tcp_pod(lab).ipv4) not in ips and "10.2.0.2" in ips and "fd00:1::2" in ips


def test_status_of_a_missing_lab_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_state, "STATE_ROOT", tmp_path)
    with pytest.raises(lab_state.LabNotFound, match="zt lab up"):
        control.status("nolab")
