"""The mesh's names: the mesh-domain rule, ztunnel's alias expansion, and the workload
`hostname` field from the mesh file to the dump."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.dns.conftest import MESH
from zt.config import dump
from zt.config.convert import snapshot as to_snapshot
from zt.config.schema import MeshFile, WorkloadModel
from zt.state.names import MeshNames, labels_of, mesh_domain, text_of
from zt.state.snapshot import Snapshot


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("reviews.default.svc.cluster.local", "svc.cluster.local"),
        ("web-0.web.default.svc.cluster.local", "svc.cluster.local"),
        ("svc.default.svc.cluster.local", "svc.cluster.local"),
        ("echo.shop.svc.corp.example", None),  # another cluster's, or a ServiceEntry's: exact
        ("a.b.svc.example.com", None),
        ("api.example.com", None),
        ("default.svc.cluster.local", None),  # too few labels before `svc`
        ("reviews.default.svc", None),  # nothing after `svc`
    ],
)
def test_mesh_domain_rule(host: str, domain: str | None) -> None:
    found = mesh_domain(labels_of(host), labels_of("cluster.local"))
    assert (text_of(found) if found is not None else None) == domain


def test_the_domains_of_a_snapshot(snapshot: Snapshot) -> None:
    names = MeshNames.build(snapshot)
    assert {text_of(d) for d in names.domains} == {"svc.cluster.local"}
    assert names.in_mesh_domain(labels_of("x.svc.cluster.local"))
    assert not names.in_mesh_domain(labels_of("cluster.local"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [  # ztunnel's to_kube_fqdns cases (src/dns/server.rs), client namespace ns1
        ("name", ["name", "name.ns1.svc.cluster.local"]),
        ("name.ns2", ["name.ns2", "name.ns2.svc.cluster.local", "name.ns2.ns1.svc.cluster.local"]),
        (
            "name.ns2.svc",
            ["name.ns2.svc", "name.ns2.svc.cluster.local", "name.ns2.svc.svc.cluster.local"],
        ),
        ("pod.sub-domain.ns.svc", ["pod.sub-domain.ns.svc", "pod.sub-domain.ns.svc.cluster.local"]),
        ("pod.sub-domain.ns.not-svc", ["pod.sub-domain.ns.not-svc"]),
        # an FQDN: no expansion, but each search suffix stripped (and the rest expanded)
        (
            "name.ns2.svc.cluster.local",
            [
                "name.ns2.svc.cluster.local",
                "name.ns2",
                "name.ns2.ns1.svc.cluster.local",
                "name.ns2.svc",
                "name.ns2.svc.svc.cluster.local",
            ],
        ),
    ],
)
def test_aliases_follow_ztunnel(name: str, expected: list[str]) -> None:
    names = MeshNames(cluster_domain=labels_of("cluster.local"))
    got = [text_of(alias) for alias, _ in names.aliases(labels_of(name), "ns1")]
    assert got == expected


def test_workload_hostname_is_validated_normalized_and_dumped() -> None:
    w = WorkloadModel.model_validate(
        {"uid": "u", "name": "n", "hostname": "Web-0.Web.default.svc.cluster.local."}
    )
    assert w.hostname == "web-0.web.default.svc.cluster.local"
    for bad in ("a..b", "-a.b", "a" * 64 + ".b", "a_b.*.c", "x" * 254):
        with pytest.raises(ValidationError, match="hostname"):
            WorkloadModel.model_validate({"uid": "u", "name": "n", "hostname": bad})
    snap = to_snapshot(MeshFile.model_validate(MESH))
    doc = dump.document(snap)
    rows = {w["uid"]: w for w in doc["workloads"]}  # type: ignore[attr-defined]
    assert rows["default/web-0"]["hostname"] == "web-0.web.default.svc.cluster.local"
    assert rows["default/client"]["hostname"] == ""
    again = to_snapshot(MeshFile.model_validate(dump.document(snap, with_identity=False)))
    assert again.by_uid["default/web-0"].hostname == "web-0.web.default.svc.cluster.local"
