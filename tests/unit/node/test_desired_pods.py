"""Which pods a node serves: config pods with a netns, plus pods added through the pod API."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

from zt.config import SnapshotStore, load_document
from zt.node.daemon import NodeDaemon, NodeOptions
from zt.node.services import NodeServices


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


def test_pods_left_enrolled_by_the_previous_run_are_held(tmp_path: Path) -> None:
    """A restart holds what the pinned capture still steers to this node: a first start that
    fails (no certificate while etcd is down) keeps the pod captured, never lets it go."""
    ns_a, ns_b, ns_c = (tmp_path / n for n in ("ns-a", "ns-b", "ns-c"))
    for ns in (ns_a, ns_b, ns_c):
        ns.touch()
    snapshot = load_document(
        {"workloads": [_w("a", netns=str(ns_a)), _w("bb", netns=str(ns_b)),
                       _w("ccc", netns=str(ns_c)), _w("dddd", netns=str(tmp_path / "gone"))]},
        "t",
    )  # fmt: skip
    enrolled = [("a", ns_a), ("bb", tmp_path / "elsewhere"), ("dddd", tmp_path / "gone"),
                ("other", ns_c)]  # fmt: skip
    capture = SimpleNamespace(status=lambda: SimpleNamespace(
        pods=[SimpleNamespace(name=n, netns=str(p)) for n, p in enrolled]))  # fmt: skip
    daemon = NodeDaemon(NodeOptions(config=Path("unused"), node="n1"))
    daemon.services = cast(
        NodeServices, SimpleNamespace(capture=capture, store=SnapshotStore(snapshot))
    )
    daemon._hold_enrolled()
    # bb moved netns, ccc was never enrolled, dddd's netns is gone, other is not this mesh's
    assert daemon._held == {"a": str(ns_a)}
