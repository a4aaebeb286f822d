"""The mesh file loader: indexes, and one test per validation error class with its exact message."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from zt.config import load_document, load_file, load_text
from zt.config.dump import document
from zt.errors import ConfigError
from zt.state import Protocol, Scope

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mesh.yaml"


def _w(uid: str, *ips: str, **extra: Any) -> dict[str, Any]:
    return {"uid": uid, "name": uid.replace("/", "-"), "workloadIps": list(ips), **extra}


def _problems(doc: object) -> list[tuple[str, object, str]]:
    with pytest.raises(ConfigError) as info:
        load_document(doc, "mesh.yaml")
    assert info.value.source == "mesh.yaml"
    return [(p.path, p.value, p.expected) for p in info.value.problems]


def test_example_loads_with_indexes() -> None:
    snap = load_file(EXAMPLE)
    assert len(snap.workloads) == 5
    assert {w.node for w in snap.workloads} == {"node-a", "node-b"}
    a1 = snap.by_uid["default/pod-a1"]
    assert snap.workload_at("", ipaddress.ip_address("fd00:1::2")) is a1
    assert a1.identity == "spiffe://cluster.local/ns/default/sa/frontend"
    assert snap.by_uid["legacy/db"].protocol is Protocol.TCP
    echo = snap.service_by_hostname["echo.default.svc.cluster.local"]
    assert snap.service_by_vip[("", ipaddress.ip_address("10.96.0.10"))] is echo
    assert snap.service_by_vip[("", ipaddress.ip_address("fd00:96::10"))] is echo
    assert [w.uid for w in snap.endpoints[echo.key]] == ["default/pod-b1", "default/pod-b2"]
    assert [p.name for p in snap.namespace_policies["default"]] == ["deny-legacy"]
    assert snap.policy_by_key["default/echo-frontend-only"].scope is Scope.WORKLOAD_SELECTOR
    assert [p.name for p in snap.policies_for(snap.by_uid["default/pod-b2"])] == [
        "deny-legacy",
        "echo-frontend-only",
    ]


def test_defaults_and_json() -> None:
    snap = load_text(json.dumps({"workloads": [_w("a", "10.0.0.1")]}), "mesh.json")
    w = snap.by_uid["a"]
    assert (w.namespace, w.service_account, w.trust_domain, w.network) == (
        "default",
        "default",
        "cluster.local",
        "",
    )
    assert w.protocol is Protocol.TCP and w.healthy


def test_an_empty_mesh_is_written_as_an_empty_mapping() -> None:
    assert load_text("{}", "empty.yaml").workloads == ()
    assert load_text("{}", "empty.json").workloads == ()


@pytest.mark.parametrize(
    "text", ["", "   \n\n", "# all commented out\n  # really\n", "---\n", "~\n"]
)
def test_an_empty_document_is_refused_not_read_as_an_empty_mesh(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(text, "empty.yaml")
    assert info.value.reason == "config_empty"
    assert "an intentionally empty mesh is written `{}`" in str(info.value)


def test_snapshot_is_immutable() -> None:
    snap = load_file(EXAMPLE)
    with pytest.raises(AttributeError):
        snap.workloads = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.by_uid["x"] = snap.workloads[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.by_uid["default/pod-b1"].services["x"] = {}  # type: ignore[index]


def test_unknown_key_is_rejected_with_its_path() -> None:
    assert _problems({"workloads": [_w("a", "10.0.0.1", workloadIP="1.2.3.4")]}) == [
        ("workloads[0].workloadIP", "1.2.3.4", "no such field (unknown key)")
    ]


def test_snake_case_keys_are_unknown() -> None:
    problems = _problems({"workloads": [_w("a", "10.0.0.1", service_account="x")]})
    assert problems[0][0] == "workloads[0].service_account"


def test_bad_ip_names_path_value_and_expectation() -> None:
    doc = {
        "workloads": [
            _w("a", "10.0.0.1"),
            _w("b", "10.0.0.2"),
            _w("c", "10.0.0.3"),
            _w("d", "10.0.0.300"),
        ]
    }
    [(path, value, expected)] = _problems(doc)
    assert (path, value) == ("workloads[3].workloadIps[0]", "10.0.0.300")
    assert "IPv4 or IPv6" in expected


def test_missing_required_field() -> None:
    assert _problems({"workloads": [{"uid": "a"}]}) == [
        ("workloads[0].name", {"uid": "a"}, "a value (required field)")
    ]


def test_bad_enum_value() -> None:
    [(path, value, expected)] = _problems({"workloads": [_w("a", "10.0.0.1", protocol="UDP")]})
    assert (path, value) == ("workloads[0].protocol", "UDP")
    assert "'HBONE' or 'TCP'" in expected


def test_duplicate_uid() -> None:
    assert _problems({"workloads": [_w("a", "10.0.0.1"), _w("a", "10.0.0.2")]}) == [
        ("workloads[1].uid", "a", "a unique uid (also workloads[0])")
    ]


def test_two_workloads_claiming_one_ip_on_one_network() -> None:
    [(path, value, expected)] = _problems(
        {"workloads": [_w("a", "10.0.0.1"), _w("b", "fd00::1", "10.0.0.1")]}
    )
    assert (path, value) == ("workloads[1].workloadIps[1]", "10.0.0.1")
    assert "workloads[0].workloadIps[0]" in expected


def test_same_ip_on_two_networks_is_fine() -> None:
    snap = load_document(
        {"workloads": [_w("a", "10.0.0.1"), _w("b", "10.0.0.1", network="n2")]}, "t"
    )
    assert snap.workload_at("n2", ipaddress.ip_address("10.0.0.1")).uid == "b"  # type: ignore[union-attr]


def _svc(**extra: Any) -> dict[str, Any]:
    return {"name": "s", "hostname": "s.default.svc", "vips": ["/10.96.0.1"], **extra}


def test_service_port_mapping_to_nothing() -> None:
    doc = {"services": [_svc(ports={80: 0})], "workloads": [_w("a", "10.0.0.1")]}
    [(path, value, expected)] = _problems(doc)
    assert (path, value) == ("services[0].ports[80]", 0)
    assert "no endpoints" in expected


def test_service_port_zero_needs_every_endpoint_mapping() -> None:
    doc = {
        "services": [_svc(ports={80: 0})],
        "workloads": [
            _w("a", "10.0.0.1", services={"default/s.default.svc": {80: 8080}}),
            _w("b", "10.0.0.2", services={"default/s.default.svc": {}}),
        ],
    }
    [(path, _, expected)] = _problems(doc)
    assert path == "services[0].ports[80]" and "['b']" in expected


def test_workload_port_not_in_service() -> None:
    doc = {
        "services": [_svc(ports={80: 8080})],
        "workloads": [_w("a", "10.0.0.1", services={"default/s.default.svc": {81: 8081}})],
    }
    assert _problems(doc) == [
        (
            "workloads[0].services['default/s.default.svc'][81]",
            81,
            "a port of service default/s.default.svc ([80])",
        )
    ]


def test_workload_names_unknown_service() -> None:
    doc = {"workloads": [_w("a", "10.0.0.1", services={"default/nope": {80: 80}})]}
    [(path, value, _)] = _problems(doc)
    assert (path, value) == ("workloads[0].services", "default/nope")


def test_malformed_spiffe_id() -> None:
    [(path, value, expected)] = _problems(
        {"services": [_svc(subjectAltNames=["spiffe://td/ns/a/serviceaccount/b"])]}
    )
    assert (path, value) == ("services[0].subjectAltNames[0]", "spiffe://td/ns/a/serviceaccount/b")
    assert "spiffe://<trust-domain>/ns/<ns>/sa/<sa>" in expected


def test_malformed_cidr_in_a_deep_rule() -> None:
    policy = {
        "name": "p",
        "scope": "Global",
        "action": "Deny",
        "rules": [[[{"sourceIps": ["10.0.0.0/33"]}]]],
    }
    [(path, value, expected)] = _problems({"policies": [policy]})
    assert (path, value) == ("policies[0].rules[0][0][0].sourceIps[0]", "10.0.0.0/33")
    assert "CIDR" in expected


def test_duplicate_vip_and_vip_on_a_workload() -> None:
    doc = {
        "services": [_svc(), _svc(name="t", hostname="t.default.svc", vips=["/10.96.0.1"])],
        "workloads": [_w("a", "10.96.0.1")],
    }
    paths = [p[0] for p in _problems(doc)]
    assert paths == ["services[0].vips[0]", "services[1].vips[0]", "services[1].vips[0]"]


def test_duplicate_policy_and_bad_selector_reference() -> None:
    pol = {"name": "p", "scope": "Namespace", "action": "Allow"}
    doc = {
        "policies": [pol, pol],
        "workloads": [_w("a", "10.0.0.1", authorizationPolicies=["default/p"])],
    }
    assert [p[0] for p in _problems(doc)] == [
        "workloads[0].authorizationPolicies[0]",
        "policies[1].name",
    ]


def test_bad_port_number() -> None:
    policy = {
        "name": "p",
        "scope": "Global",
        "action": "Deny",
        "rules": [[[{"destinationPorts": [70000]}]]],
    }
    [(path, value, _)] = _problems({"policies": [policy]})
    assert (path, value) == ("policies[0].rules[0][0][0].destinationPorts[0]", 70000)


def test_document_not_a_mapping() -> None:
    assert _problems([1, 2])[0][0] == "(document)"


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("workloads:\n  - uid: a\n   name: b\n")
    with pytest.raises(ConfigError) as info:
        load_file(f)
    assert info.value.problems[0].path.startswith("line 3")
    assert str(f) in str(info.value)


def test_yaml_duplicate_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("workloads: []\nworkloads: []\n", "dup.yaml")
    assert info.value.problems[0].expected == "each key once per mapping"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path / "absent.yaml")
    assert info.value.problems[0].path == "(file)"


def test_every_problem_is_reported_at_once() -> None:
    doc = {"workloads": [_w("a", "bad-ip"), _w("b", "10.0.0.1", protocol="X")]}
    assert len(_problems(doc)) == 2


def test_message_format() -> None:
    with pytest.raises(ConfigError) as info:
        load_document({"workloads": [_w("a", "1.2.3")]}, "mesh.yaml")
    assert (
        str(info.value)
        .splitlines()[1]
        .startswith("  mesh.yaml: workloads[0].workloadIps[0]: got '1.2.3', expected ")
    )


def test_dump_roundtrips_every_match_field() -> None:
    everything = {
        "namespaces": ["a", "b*"],
        "notNamespaces": ["*c"],
        "principals": ["td/ns/a/sa/b"],
        "notPrincipals": ["*"],
        "serviceAccounts": [{"namespace": "a", "serviceAccount": "b"}],
        "notServiceAccounts": [{"namespace": "c", "serviceAccount": "d"}],
        "sourceIps": ["10.0.0.0/8"],
        "notSourceIps": ["fd00::/64"],
        "destinationIps": ["10.1.0.1/32"],
        "notDestinationIps": ["10.2.0.0/16"],
        "destinationPorts": [80],
        "notDestinationPorts": [81],
    }
    policy = {"name": "p", "scope": "Global", "action": "Allow", "rules": [[[everything]]]}
    first = load_document({"policies": [policy]}, "a")
    again = load_document(document(first, with_identity=False), "b")
    assert again.policies == first.policies
    assert document(first)["policies"][0]["rules"][0][0][0] == everything  # type: ignore[index]
