"""The workload fields that fill ztunnel's istio_tcp_* labels: canonicalName, canonicalRevision,
workloadName, clusterId, locality; their defaults, the dump round trip, and refusals."""

from __future__ import annotations

import pytest
import yaml

from zt.config.dump import document
from zt.config.loader import load_text
from zt.errors import ConfigError
from zt.state.model import Locality

FILLED = """
workloads:
- uid: a
  name: frontend-7d9f-abcde
  workloadName: frontend
  canonicalName: shop-frontend
  canonicalRevision: v2
  clusterId: cluster-east
  locality: {region: eu-west, zone: eu-west-1a, subzone: rack7}
- uid: b
  name: echo-1
"""


def test_fields_reach_the_state_and_defaults_follow_istiod() -> None:
    snapshot = load_text(FILLED)
    a, b = snapshot.by_uid["a"], snapshot.by_uid["b"]
    assert (a.workload_name, a.canonical_name, a.canonical_revision, a.cluster_id) == (
        "frontend", "shop-frontend", "v2", "cluster-east"
    )  # fmt: skip
    assert a.locality == Locality("eu-west", "eu-west-1a", "rack7")
    # unset: workload name = name, canonical name = workload name, revision "latest"
    assert (b.workload_name, b.canonical_name, b.canonical_revision, b.cluster_id) == (
        "echo-1", "echo-1", "latest", ""
    )  # fmt: skip
    assert b.locality == Locality()


def test_dump_writes_them_back_and_reloads_to_the_same_state() -> None:
    snapshot = load_text(FILLED)
    doc = document(snapshot, with_identity=False)
    first = doc["workloads"][0]  # type: ignore[index]
    assert first["canonicalName"] == "shop-frontend" and first["clusterId"] == "cluster-east"
    assert first["locality"] == {"region": "eu-west", "zone": "eu-west-1a", "subzone": "rack7"}
    again = load_text(yaml.safe_dump(doc))
    assert again.workloads == snapshot.workloads


@pytest.mark.parametrize(
    ("yaml_field", "path"),
    [
        ("canonicalName: 'shop frontend'", "workloads[0].canonicalName"),
        ("clusterId: -east", "workloads[0].clusterId"),
        ("locality: {zone: 'a/b'}", "workloads[0].locality.zone"),
        ("locality: {city: x}", "workloads[0].locality.city"),
    ],
)
def test_bad_values_name_field_value_and_expectation(yaml_field: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(f"workloads:\n- uid: a\n  name: a\n  {yaml_field}\n")
    message = str(caught.value)
    assert path in message
    if "city" not in path:
        assert "letters, digits, '.', '_' or '-'" in message
