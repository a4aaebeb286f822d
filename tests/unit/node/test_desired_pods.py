"""Which pods a node serves: config pods with a netns, plus pods added through the pod API."""

from __future__ import annotations

from pathlib import Path

from zt.config import load_document
from zt.node.daemon import NodeDaemon, NodeOptions


def _w(uid: str, **extra: object) -> dict[str, object]:
    base = {"uid": uid, "name": uid, "workloadIps": [f"10.0.0.{len(uid)}"], "protocol": "HBONE"}
    return {**base, "node": "n1", **extra}


def test_desired_pods_merge_config_and_pod_api() -> None:
    snapshot = load_document(
        {
            "workloads": [
                _w("a", netns="ns-a"),
                _w("bb"),  # no netns in the config: only the pod API can serve it
                _w("ccc", netns="ns-c", protocol="TCP"),  # not in the mesh: never served
                _w("dddd", netns="ns-d", node="n2"),  # another node's
            ]
        },
        "t",
    )
    daemon = NodeDaemon(NodeOptions(config=Path("unused"), node="n1"))
    daemon._api_pods.update({"bb": "ns-b", "gone": "ns-x", "dddd": "ns-d2"})
    desired = daemon._desired(snapshot)
    assert {uid: netns for uid, (_, netns) in desired.items()} == {"a": "ns-a", "bb": "ns-b"}
    assert desired["a"][0] is snapshot.by_uid["a"]
