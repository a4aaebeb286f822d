"""Service and workload hostnames in the mesh file: RFC 1123 names (a `*.` wildcard for services),
lowercased at the edge so every index compares them exactly; bad ones refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from zt.config import load_document
from zt.errors import ConfigError


def _doc(service_host: str, workload_host: str = "") -> dict[str, Any]:
    workload: dict[str, Any] = {"uid": "default/w", "name": "w", "workloadIps": ["10.0.0.1"]}
    if workload_host:
        workload["hostname"] = workload_host
    workload["services"] = {"default/Echo.Default.svc.cluster.local": {80: 8080}}
    service = {"name": "echo", "hostname": service_host, "vips": ["10.96.0.1"], "ports": {80: 0}}
    return {"workloads": [workload], "services": [service]}


def test_hostnames_are_lowercased_and_endpoint_keys_follow() -> None:
    snap = load_document(
        _doc("Echo.Default.SVC.cluster.local.", "W.Sub.default.svc.cluster.local"), "t"
    )
    assert [s.hostname for s in snap.services] == ["echo.default.svc.cluster.local"]
    assert snap.by_uid["default/w"].hostname == "w.sub.default.svc.cluster.local"
    # the workload's mixed-case key still makes it an endpoint of the service
    endpoints = snap.endpoints["default/echo.default.svc.cluster.local"]
    assert [w.uid for w in endpoints] == ["default/w"]


def test_a_service_hostname_may_be_a_wildcard() -> None:
    doc = _doc("*.Example.COM")
    doc["workloads"][0]["services"] = {"default/*.EXAMPLE.com": {80: 8080}}
    snap = load_document(doc, "t")
    assert snap.services[0].hostname == "*.example.com"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("services[0].hostname", ""),
        ("services[0].hostname", "a_b.example"),  # RFC 1123: no '_'
        ("services[0].hostname", "echo..default"),
        ("services[0].hostname", "-echo.default"),
        ("services[0].hostname", "10.96.0.1"),  # an address is no name (RFC 1123 §2.1)
        ("services[0].hostname", "a." * 127 + "b"),  # 255 characters
        ("services[0].hostname", "*"),
        ("services[0].hostname", "a.*.example"),  # a wildcard only as the first label
        ("services[0].hostname", "\u00e9cho.example"),
        ("workloads[0].hostname", "web_0.web"),
        ("workloads[0].hostname", "*.web.default.svc.cluster.local"),  # workloads: no wildcard
    ],
)
def test_bad_hostnames_are_refused_naming_field_value_and_form(field: str, value: str) -> None:
    doc = _doc(value, "") if field.startswith("services") else _doc("echo.default", value)
    with pytest.raises(ConfigError) as info:
        load_document(doc, "mesh.yaml")
    [problem] = info.value.problems
    assert (problem.path, problem.value) == (field, value)
    assert "RFC 1123" in problem.expected
    assert f"{field}: got {value[:20]!r}"[:-1] in str(info.value)
