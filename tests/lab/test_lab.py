"""`zt lab up|status|exec|down`: idempotent down, nothing half-built after a failed up,
leftovers of a crashed lab cleaned by the next up, the status JSON shape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.node.lab import GENERATION, metric
from zt.errors import UsageError
from zt.lab import control, demo, mesh, runner, topology, waypointdemo
from zt.lab import dns as labdns
from zt.lab.apps import wait_listening
from zt.lab.state import LabState, state_dir
from zt.timescale import scaled

pytestmark = pytest.mark.root

ZT = str(runner.ZT)


def zt(*args: str) -> subprocess.CompletedProcess[str]:
    """The zt CLI as a user runs it (a separate process: the lab state must carry over)."""
    return subprocess.run([ZT, *args], capture_output=True, text=True, timeout=180, check=False)


def _name(tag: str) -> str:
    return f"{tag}{os.getpid() % 10000}"


def assert_nothing_left(name: str, pids: tuple[int, ...] = ()) -> None:
    prefix = f"zt-{name}-"
    assert topology.leftovers(prefix) == []
    assert sorted(Path("/sys/fs/bpf").glob(f"{prefix}*")) == []
    assert not state_dir(name).exists()
    assert sorted(labdns.NETNS_ETC.glob(f"{prefix}*")) == []  # the pods' resolv.conf
    assert [p for p in pids if runner.alive(p)] == []


def config_generations(state: LabState) -> dict[str, float]:
    """zt_config_generation of each node: the config snapshots it loaded so far."""
    return {
        n.name: metric(runner.http_get(n.netns, runner.METRICS_PORT, "/metrics")[1], GENERATION)
        for n in state.plan.nodes
    }


def wait_loaded(state: LabState, before: dict[str, float], timeout: float = 10.0) -> None:
    """Until every node loaded a config snapshot newer than `before`."""
    deadline = time.monotonic() + scaled(timeout)
    while any(now <= before[n] for n, now in config_generations(state).items()):
        assert time.monotonic() < deadline, f"no new config loaded in {timeout:g} s"
        time.sleep(0.1)


@pytest.fixture
def lab_name() -> Iterator[str]:
    name = _name("tl")
    try:
        yield name
    finally:
        control.down(name)
        assert_nothing_left(name)


def test_down_of_a_lab_that_does_not_exist_is_fine_twice() -> None:
    name = _name("tn")
    assert control.down(name) == []
    assert control.down(name) == []
    done = zt("lab", "down", "--name", name)
    assert done.returncode == 0 and "nothing to remove" in done.stderr


def test_a_bad_capture_mode_is_refused_before_anything_is_built() -> None:
    name = _name("tb")
    with pytest.raises(UsageError, match="--capture: got 'iptables'"):
        control.up(control.UpOptions(name=name, capture="iptables"))
    assert_nothing_left(name)
    done = zt("lab", "up", "--name", name, "--capture", "iptables")
    assert done.returncode == 2 and "--capture" in done.stderr
    assert_nothing_left(name)


def test_a_failed_up_names_the_step_and_leaves_nothing(lab_name: str) -> None:
    # every node daemon refuses its flags: topology, config, CA and apps were built by then
    steps: list[str] = []
    opts = control.UpOptions(name=lab_name, node_args=("--admin-addr", "not-an-address"))
    with pytest.raises(control.LabUpFailed) as failed:
        control.up(opts, progress=steps.append)
    assert failed.value.step == "readiness", failed.value
    assert "--admin-addr" in str(failed.value)
    assert [s.split(":")[0] for s in steps] == [
        "topology", "mesh config", "certificate authority", "pod apps", "node daemons",
    ]  # fmt: skip
    # pod apps, the outside app and its dnsmasq, two daemons
    assert len(failed.value.pids) == 2 * 2 + 1 + 1 + 2
    assert_nothing_left(lab_name, failed.value.pids)


def test_up_status_exec_then_crash_then_up_again_then_down_twice(lab_name: str) -> None:
    first = control.up(control.UpOptions(name=lab_name))
    done = zt("lab", "status", "--name", lab_name, "--json")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert [sorted({"name", "netns", "ip", "link", "pid"} - set(n)) for n in st["nodes"]] == [
        [],
        [],
    ]
    assert [n["name"] for n in st["nodes"]] == ["node1", "node2"]
    assert all(n["ready"] and n["link"] == "eth1" and runner.alive(n["pid"]) for n in st["nodes"])
    assert st["pods"][0] == {
        **st["pods"][0],
        "name": "pod1-1",
        "node": "node1",
        "ip": "10.1.0.2",
        "netns": f"zt-{lab_name}-pod1-1",
        "identity": "spiffe://cluster.local/ns/lab/sa/sa-pod1-1",
    }
    assert {"name", "node", "ip", "netns", "identity"} <= set(st["pods"][3])

    shown = zt("lab", "exec", "--name", lab_name, "pod2-2", "--", "ip", "-4", "-o", "addr")
    assert shown.returncode == 0 and "10.2.0.3/24" in shown.stdout, shown
    # a pod's commands see its kubelet-like resolv.conf: a short name through the search list
    shown = zt("lab", "exec", "--name", lab_name, "pod2-2", "--", "getent", "ahostsv4", "echo")
    assert shown.returncode == 0 and shown.stdout.startswith(mesh.SERVICE_VIP4), shown
    failing = zt("lab", "exec", "--name", lab_name, "pod1-1", "--", "false")
    assert failing.returncode == 1

    # the demo's verdict is real: without the DENY policy its two DENY rows fail, and it says so
    config = state_dir(lab_name) / "mesh.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["policies"] = []
    loaded = config_generations(first)
    config.with_suffix(".new").write_text(yaml.safe_dump(doc))
    config.with_suffix(".new").rename(config)
    wait_loaded(first, loaded)  # the daemons poll their config about every second
    shown = zt("lab", "demo", "--name", lab_name)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "not as expected: DENY policy (HBONE), DENY policy (plaintext)" in shown.stdout

    # a crash: the daemons die without draining, the lab is left as it was
    old_pids = tuple(p.pid for p in first.procs)
    for proc in first.procs:
        if proc.role.startswith("node:"):
            os.kill(proc.pid, signal.SIGKILL)
    second = control.up(control.UpOptions(name=lab_name))
    assert [p for p in old_pids if runner.alive(p)] == []
    assert all(p.pid not in old_pids for p in second.procs)
    assert control.status(lab_name)["nodes"][0]["ready"]  # type: ignore[index]

    removed = control.down(lab_name)
    assert any(r.startswith("netns ") for r in removed) and any("pins" in r for r in removed)
    assert_nothing_left(lab_name, tuple(p.pid for p in second.procs))
    again = zt("lab", "down", "--name", lab_name)
    assert again.returncode == 0 and "nothing to remove" in again.stderr


def test_state_written_by_up_is_what_status_and_down_read(lab_name: str) -> None:
    # state from a crashed `up` (pids of processes long gone) must not stop the next one
    stale = LabState(lab_name, 2, 2, "connect", str(state_dir(lab_name)))
    stale.dir.mkdir(parents=True)
    (stale.dir / "lab.json").write_text(
        stale.to_json().replace(
            '"procs": []',
            '"procs": [{"role": "node:node1", "pid": 1, "start_time": 1, "log": "x"}]',
        )
    )
    plan = topology.plan(lab_name, 1, 1)
    topology.build(plan)  # leftovers of another shape, same prefix
    # a process left inside a lab namespace that no state file names (a crash before saving)
    stray = runner.start_app(plan.pods[0].netns, (8080,), stale.dir / "stray.log")
    wait_listening(plan.pods[0].netns, 8080)  # inside the namespace by now (nsenter has run)
    removed = control.down(lab_name)
    assert runner.alive(1)  # pid 1 was not ours (start time differs): untouched
    assert any(r.startswith("netns") for r in removed)
    assert f"process {stray} (left in a lab namespace)" in removed
    assert_nothing_left(lab_name, (stray,))


def test_demo_passes_with_sklookup_capture_json_access_logs_and_a_waypoint(lab_name: str) -> None:
    opts = control.UpOptions(name=lab_name, capture="sklookup", log_format="json", waypoint=True)
    state = control.up(opts)
    st = control.status(lab_name)
    assert st["capture"] == "sklookup"
    wp = st["waypoint"]
    assert isinstance(wp, dict) and runner.alive(wp["pid"]) and wp["ip"] == "10.1.0.250"
    rows = demo.run(state)
    assert demo.failed(rows) == [], demo.table(rows)
    # the waypoint's rows (zt.lab.waypointdemo), judged inside the node link's capture
    assert [r.scenario for r in rows[-4:-1]] == [c.name for c in waypointdemo.CASES] + [
        "waypoint bypass refused (L4)"
    ]
    assert len(rows) == len(demo.scenarios(state.plan)) + 3 + 1
    # the app behind the waypoint got the allowed request and never the denied one
    served = (state.dir / "web-pod2-1.log").read_text() + (state.dir / "web-pod2-2.log").read_text()
    assert '"GET / HTTP/1.1" 200' in served and "/admin" not in served
    first = (state.dir / "node1.log").read_text()
    assert '"msg":"connection complete"' in first  # the rows above were judged from JSON records
