"""The fleet lab's plan without namespaces: the control host, where etcd and the credentials live,
the probe policy of the demo, and lab state of either kind (no root needed)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from zt.config import load_document
from zt.errors import ConfigError, UsageError
from zt.lab import control, fleet, fleetdemo, labconfig, mesh, topology
from zt.lab.state import LabState


def test_the_control_host_is_planned_only_for_a_fleet_lab() -> None:
    plain = topology.plan("t", 2, 2)
    fleet_plan = topology.plan("t", 2, 2, control=True)
    assert plain.control_netns is None and "zt-t-ctl" not in plain.namespaces
    assert fleet_plan.namespaces == (*plain.namespaces, "zt-t-ctl")
    # on the fabric's /24 with the nodes, so they reach it without a route
    fabric = ipaddress.ip_network("10.255.0.0/24")
    assert fleet_plan.control_ipv4 in fabric and fleet_plan.control_ipv4 != plain.external_ipv4
    assert all(n.link_ipv4 != fleet_plan.control_ipv4 for n in fleet_plan.nodes)


def test_state_says_where_the_control_plane_and_credentials_live() -> None:
    state = LabState("t", 2, 2, "connect", "/run/zt/lab-t", control="etcd")
    assert LabState.from_json(state.to_json(), "mem") == state
    old = json.loads(state.to_json())
    del old["control"]  # a state file written before fleet labs existed reads as a file lab
    assert not LabState.from_json(json.dumps(old), "mem").fleet
    ctl = fleet.Control(state)
    assert ctl.netns == "zt-t-ctl"
    assert ctl.endpoints == [
        "https://10.255.0.250:2379",
        "https://10.255.0.250:2479",
        "https://10.255.0.250:2579",
    ]
    assert ctl.initial_cluster.count("=https://10.255.0.250:2") == 3
    flags = ctl.root_flags()
    assert flags[flags.index("--etcd-user") + 1] == "root"
    assert flags[flags.index("--etcd-password-file") + 1] == "/run/zt/lab-t/etcd-root.password"
    assert str(state.node_state_dir("node2")) == "/run/zt/lab-t/nodes/node2"
    with pytest.raises(ValueError, match="no control host"):
        _ = fleet.Control(LabState("t", 2, 2, "connect", "/x")).netns


def test_the_probe_policy_denies_only_the_probed_pods_and_is_a_valid_mesh() -> None:
    lab = topology.plan("t", 3, 2)
    paths = fleetdemo.probe_paths(lab)
    assert [p.enforcer for p in paths] == ["node1", "node2", "node3"]
    assert all(p.src.node != p.dst.node for p in paths)  # every probe crosses nodes
    doc = mesh.mesh_config(lab)
    with_deny = fleetdemo.with_policy(doc, fleetdemo.probe_policy(paths))  # type: ignore[arg-type]
    snap = load_document(with_deny, "probe")
    assert len(snap.policies) == 2
    again = fleetdemo.with_policy(with_deny, fleetdemo.probe_policy(paths))
    assert len(again["policies"]) == 2  # replaced, not added twice
    assert fleetdemo.with_policy(again, None)["policies"] == doc["policies"]


def test_options_and_rendering() -> None:
    with pytest.raises(UsageError, match="--control: got 'zk'"):
        control.check_options(control.UpOptions(control="zk"))
    assert labconfig.render({"workloads": []}, 7).endswith("# revision 7\n")
    assert "revision" not in labconfig.render({"workloads": []}, None)


def test_a_file_lab_takes_a_pushed_document_only_when_it_is_valid(tmp_path: Path) -> None:
    state = LabState("t", 2, 2, "connect", str(tmp_path))
    doc = mesh.mesh_config(topology.plan("t", 2, 2))
    state.config.write_text(yaml.safe_dump(doc))
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({**doc, "policies": []}))
    assert "wrote" in labconfig.push(state, new)
    assert labconfig.get(state) == ({**doc, "policies": []}, None)
    new.write_text("workloads: [{uid: x, workloadIps: [not-an-ip]}]\n")
    with pytest.raises(ConfigError, match="workloadIps"):
        labconfig.push(state, new)
    assert labconfig.get(state)[0]["policies"] == []  # the lab's file is untouched
