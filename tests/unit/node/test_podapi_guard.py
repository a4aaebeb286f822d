"""The pod API's guards without root: netns validation, socket mode, answers to every line."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from zt.node.podapi import (
    MAX_LINE,
    BadPodRequest,
    PodAdd,
    PodApiForbidden,
    PodList,
    PodRemove,
    check_netns,
    check_peer,
    serve,
)

Cmd = PodAdd | PodRemove | PodList


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("/proc/self/ns/net", "that is the node's own network namespace"),
        (f"/proc/{os.getpid()}/ns/net", "that is the node's own network namespace"),
        ("/etc/hostname", "not a network namespace file"),
        ("/proc/self/ns/mnt", "not a network namespace file"),  # a namespace, of another type
        ("/dev/null", "not a namespace file"),
        ("/run", "not a namespace file"),
        ("netns/../x", "a relative path"),
        ("relative/path", "a relative path"),
        ("..", "not a name"),
        ("zt-no-such-netns-7f3a", "No such file or directory"),
        ("/no/such/file", "No such file or directory"),
        ("/etc/host\x00name", "not a path"),
    ],
)
def test_netns_must_be_another_network_namespace(value: str, why: str) -> None:
    with pytest.raises(BadPodRequest) as info:
        check_netns(value)
    message = str(info.value)
    assert message.startswith(f"netns: got {value!r}, expected a network namespace: a name under")
    assert message.endswith(f"({why})")


def test_named_netns_is_looked_up_in_the_run_dir(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("not a namespace\n")
    with pytest.raises(BadPodRequest, match="not a network namespace file"):
        check_netns("hostname", run_dir=tmp_path)
    with pytest.raises(BadPodRequest, match="No such file"):
        check_netns("hostname")  # not under /run/netns


def test_only_root_peers() -> None:
    check_peer(0)
    with pytest.raises(PodApiForbidden, match=r"got uid 65534, expected root \(uid 0\)"):
        check_peer(65534)


async def _with_server(
    path: Path, handle: Callable[[Cmd], Awaitable[dict[str, object]]], lines: list[bytes]
) -> list[dict[str, object]]:
    server = await serve(path, handle)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * MAX_LINE)
        answers = []
        for line in lines:
            writer.write(line)
            await writer.drain()
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), timeout=10)))
        writer.close()
        return answers
    finally:
        server.close()
        await server.wait_closed()


def test_socket_is_0600_even_under_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "pods.sock"

    async def handle(cmd: Cmd) -> dict[str, object]:
        return {}

    async def scenario() -> int:
        server = await serve(path, handle)
        mode = stat.S_IMODE(path.stat().st_mode)
        server.close()
        await server.wait_closed()
        return mode

    old = os.umask(0)
    try:
        assert asyncio.run(scenario()) == 0o600
        assert os.umask(0) == 0  # serve restored the caller's umask
    finally:
        os.umask(old)
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_every_line_gets_an_answer(tmp_path: Path) -> None:
    """Garbage, a handler that raises and an over-long line all answer `ok: false`; the session
    goes on after the first two (the last one ends it)."""

    async def handle(cmd: Cmd) -> dict[str, object]:
        if isinstance(cmd, PodRemove):
            raise RuntimeError("bug in the handler")
        return {"pods": []}

    lines = [
        b"\xff\xfe not json\n",
        b'{"op":"remove","uid":"a"}\n',
        b'{"op":"list"}\n',
        b'{"op":"list","pad":"' + b"x" * (MAX_LINE + 10) + b'"}\n',
    ]
    answers = asyncio.run(_with_server(tmp_path / "pods.sock", handle, lines))
    assert answers[0]["ok"] is False and answers[0]["reason"] == "bad_pod_request"
    assert answers[1] == {
        "ok": False,
        "error": "internal error: RuntimeError",
        "reason": "internal_error",
    }
    assert answers[2] == {"ok": True, "pods": []}
    assert answers[3]["ok"] is False and f"over {MAX_LINE} bytes" in str(answers[3]["error"])


def test_client_sees_the_refusal(tmp_path: Path) -> None:
    """A bad netns is refused before the handler runs."""
    seen: list[Cmd] = []

    async def handle(cmd: Cmd) -> dict[str, object]:
        seen.append(cmd)
        return {}

    line = json.dumps({"op": "add", "uid": "a", "netns": "/etc/hostname"}).encode() + b"\n"
    (answer,) = asyncio.run(_with_server(tmp_path / "pods.sock", handle, [line]))
    assert answer["ok"] is False and "netns: got '/etc/hostname'" in str(answer["error"])
    assert seen == []  # (a non-root peer and a real netns: tests/netns/test_api.py, as root)
