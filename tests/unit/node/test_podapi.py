"""The pod API over a real unix socket."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from zt.errors import NotFoundError
from zt.node.podapi import (
    BadPodRequest,
    PodAdd,
    PodApiUnavailable,
    PodList,
    PodRemove,
    call,
    decode_request,
    serve,
)


def test_decode_names_the_bad_field() -> None:
    assert decode_request(b'{"op":"add","uid":"a","netns":"n"}') == PodAdd(
        op="add", uid="a", netns="n"
    )
    with pytest.raises(BadPodRequest, match="netns"):
        decode_request(b'{"op":"add","uid":"a"}')
    with pytest.raises(BadPodRequest, match="op"):
        decode_request(b'{"op":"explode"}')
    with pytest.raises(BadPodRequest):
        decode_request(b"not json")


def test_roundtrip_over_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "pods.sock"
    pods: dict[str, str] = {}

    async def handle(cmd: PodAdd | PodRemove | PodList) -> dict[str, object]:
        if isinstance(cmd, PodAdd):
            pods[cmd.uid] = cmd.netns
            return {"added": cmd.uid}
        if isinstance(cmd, PodRemove):
            if cmd.uid not in pods:
                raise NotFoundError(f"pod {cmd.uid!r} is not served here")
            del pods[cmd.uid]
            return {"removed": cmd.uid}
        return {"pods": sorted(pods)}

    async def scenario() -> list[dict[str, object]]:
        server = await serve(path, handle)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        try:
            requests = [
                {"op": "add", "uid": "lab/p1", "netns": "/proc/self/ns/net"},
                {"op": "list"},
                {"op": "remove", "uid": "nope"},
                {"op": "add"},
                {"op": "remove", "uid": "lab/p1"},
            ]
            return [await asyncio.to_thread(call, path, r, 5.0) for r in requests]
        finally:
            server.close()
            await server.wait_closed()

    responses = asyncio.run(scenario())
    assert pods == {}
    # the node's own netns is refused before the handler runs (a real netns: tests/netns/test_api.py)
    assert responses[0]["ok"] is False and responses[0]["reason"] == "bad_pod_request"
    assert "that is the node's own network namespace" in str(responses[0]["error"])
    assert responses[1] == {"ok": True, "pods": []}
    assert responses[2] == {
        "ok": False,
        "error": "pod 'nope' is not served here",
        "reason": "not_found",
    }
    assert responses[3]["ok"] is False and responses[3]["reason"] == "bad_pod_request"
    assert responses[4]["reason"] == "not_found"


def test_call_without_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PodApiUnavailable, match="is `zt run` up"):
        call(tmp_path / "absent.sock", {"op": "list"}, 1.0)
