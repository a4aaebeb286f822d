"""Key layout and mesh document <-> etcd objects (pure: no etcd)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zt.config.dump import document
from zt.config.loader import load_file, parse_text, read_bounded
from zt.errors import ConfigError
from zt.fleet import keys, meshdoc
from zt.fleet.meshdoc import EtcdBadObject, EtcdMeshInvalid, MeshDecoder
from zt.state.snapshot import Snapshot

EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh.yaml"
P = "/zt"


def example_objects() -> dict[bytes, bytes]:
    return meshdoc.encode(P, parse_text(read_bounded(EXAMPLE), str(EXAMPLE)), str(EXAMPLE))


def normalized(snapshot: Snapshot) -> dict[str, list[str]]:
    """The snapshot's document, order-free (etcd lists objects in key order)."""
    doc = document(snapshot)
    return {k: sorted(json.dumps(o, sort_keys=True) for o in v) for k, v in doc.items()}  # type: ignore[attr-defined]


# --- keys -------------------------------------------------------------------------------------


def test_key_layout_and_parse_round_trip() -> None:
    assert keys.workload_key(P, "default/pod-a1") == b"/zt/mesh/workloads/default%2Fpod-a1"
    assert keys.service_key(P, "default", "echo") == b"/zt/mesh/services/default/echo"
    assert keys.csr_key("/a/b", "node-1", "r1") == b"/a/b/csr/node-1/r1"
    assert keys.mesh_prefix(P) == b"/zt/mesh/"
    built = [
        keys.workload_key(P, "ns/a b%c"),
        keys.policy_key(P, "ns", "deny"),
        keys.bundle_key(P),
        keys.node_cert_key(P, "n1"),
        keys.cert_key(P, "n1", "r9"),
        keys.join_request_key(P, "tok"),
        keys.join_response_key(P, "tok"),
        keys.token_key(P, "tok"),
        keys.mesh_push_key(P),
    ]
    for key in built:
        parsed = keys.parse(P, key)
        assert parsed is not None, key
        assert keys.key_of(P, parsed) == key
    assert keys.parse(P, keys.workload_key(P, "ns/a b%c")) == keys.ParsedKey(
        "workload", ("ns/a b%c",)
    )


@pytest.mark.parametrize(
    "key",
    [
        b"/other/mesh/workloads/x",
        b"/zt/mesh/workloads/a%2db",
        b"/zt/mesh/services/x",
        b"/zt/mesh/x/y/z",
    ],
)
def test_parse_refuses_foreign_and_non_canonical_keys(key: bytes) -> None:
    assert keys.parse(P, key) is None


@pytest.mark.parametrize("prefix", ["zt", "/zt/", "/z\nt", "/a//b", ""])
def test_bad_prefix_is_one_line_naming_the_flag(prefix: str) -> None:
    with pytest.raises(keys.BadKeyPrefix) as exc:
        keys.mesh_prefix(prefix)
    assert "--etcd-prefix" in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("name", ["", "a/b", "..", "a\tb"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(keys.BadKeyName):
        keys.csr_key(P, name, "r1")


# --- encode / decode --------------------------------------------------------------------------


def test_round_trip_of_the_example_equals_load_file() -> None:
    objects = example_objects()
    assert len(objects) == 8
    assert all(json.loads(v) for v in objects.values())
    assert normalized(meshdoc.decode(P, objects)) == normalized(load_file(EXAMPLE))
    # stable: the decoded mesh encodes to the same bytes
    again = meshdoc.document_of(P, objects)
    assert meshdoc.encode(P, again) == objects


def test_encode_validates_like_check_and_refuses_shared_service_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        meshdoc.encode(P, {"workloads": [{"uid": "u"}]}, "m.yaml")
    assert "workloads[0].name" in str(exc.value)
    twins = {
        "services": [
            {"name": "s", "hostname": "a.example"},
            {"name": "s", "hostname": "b.example"},
        ]
    }
    with pytest.raises(ConfigError) as exc:
        meshdoc.encode(P, twins, "m.yaml")
    assert "services[1].name" in str(exc.value) and "services[0]" in str(exc.value)


def test_a_bad_object_names_its_key_and_field() -> None:
    objects = example_objects()
    key = keys.workload_key(P, "default/pod-a1")
    objects[key] = objects[key].replace(b'"10.1.0.2"', b'"x"')
    with pytest.raises(EtcdBadObject) as exc:
        meshdoc.decode(P, objects)
    err = exc.value
    assert err.key == key.decode() and err.reason == "etcd_bad_object" and err.exit_code == 2
    assert f"{key.decode()}: workloadIps[0]: got 'x', expected" in str(err)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        (b"/zt/mesh/workloads/u1", b"{not json", "line 1 column 2"),
        (b"/zt/mesh/workloads/u1", b"[1]", "(value): got [1], expected a JSON object"),
        (b"/zt/mesh/workloads/u1", b'{"uid":"u2","name":"n"}', "uid: got 'u2'"),
        (
            b"/zt/mesh/services/ns/s",
            b'{"name":"t","namespace":"ns","hostname":"h"}',
            "name: got 't'",
        ),
        (b"/zt/mesh/oops", b"{}", "(key): got '/zt/mesh/oops'"),
        (
            b"/zt/mesh/policies/default/p",
            b'{"name":"p","bogus":1}',
            "bogus: got 1, expected no such field",
        ),
    ],
)
def test_object_problems(key: bytes, value: bytes, needle: str) -> None:
    with pytest.raises(EtcdBadObject) as exc:
        meshdoc.decode(P, {key: value})
    assert exc.value.key == key.decode()
    assert needle in str(exc.value)


def test_whole_mesh_problems_are_said_by_key() -> None:
    objects = example_objects()
    del objects[keys.service_key(P, "default", "echo")]
    with pytest.raises(EtcdMeshInvalid) as exc:
        meshdoc.decode(P, objects)
    text = str(exc.value)
    assert "/zt/mesh/workloads/default%2Fpod-b1: services: got 'default/echo" in text
    assert exc.value.key == "/zt/mesh/workloads/default%2Fpod-b1"


def test_decoder_revalidates_only_changed_objects() -> None:
    objects = example_objects()
    decoder = MeshDecoder(P)
    first = decoder.decode(objects)
    assert decoder.validated == 8
    key = keys.policy_key(P, "default", "deny-legacy")
    objects[key] = objects[key].replace(b"10.2.0.10/32", b"10.2.0.0/24")
    second = decoder.decode(objects)
    assert decoder.validated == 1
    assert second.workloads == first.workloads  # the same (cached) objects
    assert str(second.policy_by_key["default/deny-legacy"].rules[0][0][0].source_ips[0]) == (
        "10.2.0.0/24"
    )
    objects[key] = b"{"
    with pytest.raises(EtcdBadObject):
        decoder.decode(objects)
    objects[key] = meshdoc.encode(P, parse_text(read_bounded(EXAMPLE), "m"))[key]
    decoder.decode(objects)
    assert decoder.validated == 1


def test_empty_mesh_decodes() -> None:
    snapshot = meshdoc.decode(P, {})
    assert snapshot.workloads == () and snapshot.policies == ()


# --- diff ------------------------------------------------------------------------------------


def test_diff_and_its_rendering() -> None:
    before = example_objects()
    text = read_bounded(EXAMPLE).replace("serviceAccount: frontend", "serviceAccount: fe")
    text = text.replace("- name: deny-legacy", "- name: deny-old")
    after = meshdoc.encode(P, parse_text(text, "m.yaml"))
    d = meshdoc.diff(before, after)
    assert d.added == (keys.policy_key(P, "default", "deny-old"),)
    assert d.removed == (keys.policy_key(P, "default", "deny-legacy"),)
    assert d.changed == (keys.workload_key(P, "default/pod-a1"),)
    out = d.render()
    assert "+ /zt/mesh/policies/default/deny-old" in out
    assert "- /zt/mesh/policies/default/deny-legacy" in out
    assert "~ /zt/mesh/workloads/default%2Fpod-a1\n" in out
    assert '-  "serviceAccount": "frontend",' in out and '+  "serviceAccount": "fe",' in out
    assert out.endswith("1 added, 1 changed, 1 removed")
    assert meshdoc.diff(before, before).empty
    # a value written by hand (not canonical) but equal as JSON is no change
    key = d.changed[0]
    loose = {**before, key: json.dumps(json.loads(before[key]), indent=1).encode()}
    assert meshdoc.diff(loose, before).empty
