"""Hypothesis: whatever document arrives, the loader returns a snapshot or a ConfigError."""

from __future__ import annotations

import contextlib
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zt.config import load_document, load_text
from zt.errors import ConfigError
from zt.state import Snapshot

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "10.0.0.1",
            "fd00::1",
            "10.0.0.0/8",
            "HBONE",
            "TCP",
            "Allow",
            "Deny",
            "Global",
            "Namespace",
            "WorkloadSelector",
            "spiffe://td/ns/a/sa/b",
            "*",
            "default/x",
            "/10.96.0.1",
        ]
    ),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(0, 70000)), inner, max_size=4),
    ),
    max_leaves=25,
)
_keys = st.sampled_from(
    [
        "uid",
        "name",
        "namespace",
        "serviceAccount",
        "trustDomain",
        "workloadIps",
        "network",
        "protocol",
        "node",
        "netns",
        "status",
        "services",
        "authorizationPolicies",
        "hostname",
        "vips",
        "ports",
        "subjectAltNames",
        "scope",
        "action",
        "dryRun",
        "rules",
        "sourceIps",
        "destinationPorts",
        "principals",
        "namespaces",
        "serviceAccounts",
    ]
)
_objects = st.dictionaries(_keys, _json, max_size=8)
_documents = st.one_of(
    _json,
    st.fixed_dictionaries(
        {},
        optional={
            "workloads": st.lists(_objects, max_size=4),
            "services": st.lists(_objects, max_size=3),
            "policies": st.lists(_objects, max_size=3),
        },
    ),
)


def _clean(doc: Any) -> None:
    try:
        result = load_document(doc, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must carry at least one problem"
        for p in exc.problems:
            assert p.path and p.expected
        return
    assert isinstance(result, Snapshot)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_random_documents_load_or_fail_cleanly(doc: Any) -> None:
    _clean(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=200))
def test_random_text_loads_or_fails_cleanly(text: str) -> None:
    with contextlib.suppress(ConfigError):
        load_text(text, "fuzz.yaml")
