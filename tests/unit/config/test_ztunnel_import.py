"""ztunnel's own local config (zt/config/ztunnel/): its published example round-trips ztunnel ->
zt -> ztunnel to an equivalent document; string matches, VIPs, service maps and refusals; and the
`zt config check|import|export` commands over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from zt.config import ztunnel
from zt.config.loader import read_bounded
from zt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
LOCALHOST = ROOT / "tests" / "data" / "ztunnel-localhost.yaml"
runner = CliRunner()

WORKLOAD = {"uid": "u1", "name": "a", "namespace": "default", "workloadIps": ["10.0.0.1"],
            "protocol": "HBONE", "services": {}}  # fmt: skip


def _doc(**top: object) -> dict[str, object]:
    return {"workloads": [dict(WORKLOAD)], **top}


def _policy(*matches: dict[str, object]) -> dict[str, object]:
    return {"name": "p", "namespace": "default", "scope": "Global", "action": "Allow",
            "dryRun": False, "rules": [[list(matches)]]}  # fmt: skip


def _problems(document: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ztunnel.import_document(document, "t")
    return [str(p) for p in info.value.problems]


def test_the_published_example_round_trips() -> None:
    text = read_bounded(LOCALHOST)
    original = ztunnel.parse(text, "localhost")
    assert ztunnel.detect(original) == ("ztunnel", "services[0].canonical")
    imported, snap = ztunnel.import_document(original, "localhost")
    assert [w.uid for w in snap.workloads] == [
        "cluster1//v1/Pod/default/local",
        "cluster1//v1/Pod/default/local-tcp",
    ]
    assert [s.vips for s in snap.services][1][0][0] == "remote"
    assert [n.path for n in imported.notes] == ["services[0].canonical", "services[1].canonical"]
    exported = ztunnel.export_document(imported.mesh, "mesh")
    again = ztunnel.parse(ztunnel.dump_yaml(exported.mesh), "exported")
    assert ztunnel.normal_form(again, "exported") == ztunnel.normal_form(original, "localhost")


@pytest.mark.parametrize(
    ("tagged", "pattern"),
    [
        ("!Exact default", "default"),
        ("!Prefix team-", "team-*"),
        ("!Suffix -prod", "*-prod"),
        ("!Presence []", "*"),
        ("{Exact: default}", "default"),
    ],
)
def test_string_matches_become_istio_patterns_and_back(tagged: str, pattern: str) -> None:
    text = (
        "workloads: []\nservices: []\npolicies:\n- {name: p, namespace: ns, scope: Global, "
        f"action: Deny, dryRun: false, rules: [[[{{namespaces: [{tagged}]}}]]]}}\n"
    )
    document = ztunnel.parse(text, "t")
    assert ztunnel.detect(document)[0] == "ztunnel"
    imported, snap = ztunnel.import_document(document, "t")
    [[[match]]] = snap.policies[0].rules
    assert [str(m) for m in match.namespaces] == [pattern]
    exported = ztunnel.dump_yaml(ztunnel.export_document(imported.mesh, "m").mesh)
    kind = tagged.strip("{").split()[0].rstrip(":").lstrip("!")
    assert f"!{kind}" in exported
    assert ztunnel.normal_form(ztunnel.parse(exported, "e"), "e") == ztunnel.normal_form(
        document, "t"
    )


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"Exact": "a*"}, "no '*' at an end"),
        ({"Prefix": ""}, "a non-empty Prefix"),
        ({"Presence": ["x"]}, "Presence takes no value"),
        ({"Exact": "a", "Prefix": "b"}, "one of"),
        ("default", "one of !Exact v"),
    ],
)
def test_string_matches_zt_cannot_carry_are_refused(match: object, expected: str) -> None:
    [problem] = _problems(_doc(policies=[_policy({"namespaces": [match]})]))
    assert problem.startswith("policies[0].rules[0][0][0].namespaces[0]")
    assert expected in problem


def test_vips_are_network_slash_ip_and_services_map_ports() -> None:
    workload = dict(WORKLOAD, services={"default/echo.default.svc": {80: 8080}})
    service = {"name": "echo", "namespace": "default", "hostname": "echo.default.svc",
               "vips": ["net1/10.96.0.10", "/fd00::10"], "ports": {80: 8080}}  # fmt: skip
    _, snap = ztunnel.import_document({"workloads": [workload], "services": [service]}, "t")
    [echo] = snap.services
    assert [(n, str(ip)) for n, ip in echo.vips] == [("net1", "10.96.0.10"), ("", "fd00::10")]
    assert dict(snap.workloads[0].services["default/echo.default.svc"]) == {80: 8080}
    [problem] = _problems({"services": [dict(service, vips=["10.96.0.10"])]})
    assert "services[0].vips[0]: got '10.96.0.10', expected '<network>/<ip>'" in problem


def test_bad_input_names_field_value_and_expectation() -> None:
    no_services = {k: v for k, v in WORKLOAD.items() if k != "services"}
    problems = _problems({"workloads": [dict(no_services, typo=1, capacity=3)]})
    assert "workloads[0].services: got" in problems[0] and "required field" in problems[0]
    assert any("workloads[0].typo" in p and "unknown key" in p for p in problems)
    refused = _problems({"workloads": [dict(WORKLOAD, capacity=3, nativeTunnel=True, uid="")]})
    assert [p.split(":")[0] for p in refused] == [
        "workloads[0].uid", "workloads[0].nativeTunnel", "workloads[0].capacity",
    ]  # fmt: skip
    ips = _problems(_doc(policies=[_policy({"sourceIps": ["10.0.0.1"]})]))
    assert "sourceIps[0]: got '10.0.0.1', expected a CIDR with its prefix length" in ips[0]


def test_canonical_is_refused_where_it_would_choose() -> None:
    service = {"name": "s", "hostname": "shared.example", "vips": [], "ports": {}}
    both = [dict(service, namespace="a", canonical=True), dict(service, namespace="b")]
    [problem] = _problems({"services": both})
    assert problem.startswith("services[0].canonical: got True")


def test_waypoint_is_translated_into_zt_form() -> None:
    wp = {"destination": "ns/wp.ns.svc.cluster.local", "hboneMtlsPort": 15008}
    doc = {"workloads": [dict(WORKLOAD, waypoint=wp)]}
    assert ztunnel.detect(doc) == ("ztunnel", "workloads[0].waypoint")
    imported = ztunnel.to_zt.to_mesh(ztunnel.schema.LocalConfig.model_validate(doc))
    assert imported.mesh["workloads"][0]["waypoint"] == {  # type: ignore[index]
        "destination": {"namespace": "ns", "hostname": "wp.ns.svc.cluster.local"},
        "hboneMtlsPort": 15008,
    }


def test_cli_check_import_export(tmp_path: Path) -> None:
    checked = runner.invoke(app, ["config", "check", str(LOCALHOST)])
    assert checked.exit_code == 0, checked.output
    assert "(ztunnel's local config, detected by services[0].canonical): 2 workloads" in (
        checked.stdout
    )
    assert "note: services[0].canonical" in checked.stderr
    forced = runner.invoke(app, ["config", "check", "--format", "zt", str(LOCALHOST)])
    assert forced.exit_code == 2 and "services[0].canonical" in forced.stderr
    mesh = tmp_path / "mesh.yaml"
    imported = runner.invoke(app, ["config", "import", str(LOCALHOST), "-o", str(mesh)])
    assert imported.exit_code == 0, imported.output
    rechecked = runner.invoke(app, ["config", "check", str(mesh)])
    assert rechecked.stdout.startswith(f"ok: {mesh}: 2 workloads on 1 nodes, 2 services")
    exported = runner.invoke(app, ["config", "export", str(mesh), "--format", "ztunnel"])
    assert exported.exit_code == 0, exported.output
    assert yaml.safe_load(
        runner.invoke(app, ["config", "import", "-"], input=exported.stdout).stdout
    ) == yaml.safe_load(mesh.read_text())
    example = runner.invoke(app, ["config", "export", str(ROOT / "examples" / "mesh.yaml")])
    assert (
        example.exit_code == 0 and "!Exact 'cluster.local/ns/default/sa/frontend'" in example.stdout
    )
    assert "workloads[0].netns: not exported" in example.stderr


def test_waypoints_tunnels_and_load_balancers_round_trip() -> None:
    # Both waypoint forms (an address, a service hostname), an application tunnel and a load
    # balancer in ztunnel's own enum names: ztunnel -> zt model -> ztunnel is unchanged.
    waypoint_ip = {"destination": "/10.0.0.9", "hboneMtlsPort": 15008}
    waypoint_name = {"destination": "default/wp.default.svc", "hboneMtlsPort": 15009}
    workloads = [
        dict(WORKLOAD, waypoint=waypoint_ip),
        dict(WORKLOAD, uid="wp", name="wp", workloadIps=["10.0.0.9"],
             applicationTunnel={"protocol": "PROXY", "port": 15088}),
    ]  # fmt: skip
    lb = {"routingPreferences": ["Region", "Zone"], "mode": "Failover",
          "healthPolicy": "AllowAll"}  # fmt: skip
    services = [
        {"name": "s", "namespace": "default", "hostname": "s.default.svc",
         "vips": ["/10.96.0.1"], "ports": {80: 8080}, "waypoint": waypoint_name,
         "loadBalancer": lb},
        {"name": "wp", "namespace": "default", "hostname": "wp.default.svc",
         "vips": ["/10.96.0.9"], "ports": {15009: 15008}},
    ]  # fmt: skip
    document = {"workloads": workloads, "services": services}
    imported, snap = ztunnel.import_document(document, "t")
    assert str(snap.workloads[0].waypoint) == "/10.0.0.9:15008"
    tunnel = snap.workloads[1].application_tunnel
    assert tunnel is not None and (tunnel.protocol.value, tunnel.port) == ("PROXY", 15088)
    [svc, _] = snap.services
    assert str(svc.waypoint) == "default/wp.default.svc:15009"
    assert svc.load_balancer is not None
    assert [s.value for s in svc.load_balancer.routing_preferences] == ["REGION", "ZONE"]
    assert (svc.load_balancer.mode.value, svc.load_balancer.health_policy.value) == (
        "FAILOVER",
        "ALLOW_ALL",
    )
    exported = ztunnel.dump_yaml(ztunnel.export_document(imported.mesh, "m").mesh)
    again = ztunnel.parse(exported, "e")
    assert ztunnel.normal_form(again, "e") == ztunnel.normal_form(document, "t")
