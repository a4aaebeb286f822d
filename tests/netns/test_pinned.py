"""Pinned capture across a zt restart, and `zt capture status` read from the pins.

A subprocess plays the daemon (tests/netns/pinned_worker.py): it pins capture, enrolls a pod and
exits without detaching; capture stays fail-closed until a second process re-opens the pins and
re-registers its listeners (docs/design.md §6).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from tests.netns.sockets import app_server, connect_from, nothing_pending
from tests.netns.topo import Topology
from zt.capture import Capture, remove_pins, routing
from zt.capture.errors import CaptureError, CaptureIncompatibleError
from zt.timescale import scaled

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
_seq = itertools.count(1)


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = Path(f"/sys/fs/bpf/ztcap-{os.getpid()}-{next(_seq)}")
    try:
        yield path
    finally:
        if (path / "zt_pods").exists():
            remove_pins(path)
        if path.exists():
            for entry in path.iterdir():
                entry.unlink()
            path.rmdir()


class Worker:
    def __init__(self, pin_dir: Path, topo: Topology, mode: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.netns.pinned_worker",
                str(pin_dir),
                topo.pod,
                mode,
                topo.pod_ip4,
                topo.pod_ip6,
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def reply(self, timeout: float = 15.0) -> dict[str, Any]:
        timeout = scaled(timeout)  # the worker compiles bcc: minutes under emulation
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"worker {self.proc.pid} said nothing in {timeout} s"
        line = self.proc.stdout.readline()
        assert line, f"worker {self.proc.pid} exited with {self.proc.wait(5)}"
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def finish(self, cmd: str) -> None:
        self.send(cmd)
        assert self.proc.wait(15) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # only the process this test started, by its handle
            self.proc.wait(5)


def _status(pin_dir: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli_app, ["capture", "status", "--pin-dir", str(pin_dir), "--json"])
    return result.exit_code, json.loads(result.stdout)


def _link_ids() -> set[int]:
    out = subprocess.run(
        ["bpftool", "link", "show", "-j"], capture_output=True, text=True, check=True
    ).stdout
    return {int(link["id"]) for link in json.loads(out or "[]")}


@pytest.mark.parametrize("mode", ["connect", "sklookup"])
def test_capture_survives_restart_fail_closed(topo: Topology, pin_dir: Path, mode: str) -> None:
    app = app_server(topo.pod, 8080)
    first = Worker(pin_dir, topo, mode)
    second: Worker | None = None
    try:
        assert first.reply()["ready"]
        code, st = _status(pin_dir)
        assert code == 0 and st["running"] and st["mode"] == mode
        assert [(p["name"], sorted(p["ips"]), p["listeners"]) for p in st["pods"]] == [
            ("pod-pinned", sorted([topo.pod_ip4, topo.pod_ip6]), ["outbound", "inbound", "hbone"])
        ]
        links = {link["link_id"] for link in st["links"]}
        human = CliRunner().invoke(cli_app, ["capture", "status", "--pin-dir", str(pin_dir)])
        assert human.exit_code == 0
        assert f"mode: {mode}" in human.stdout
        assert "pod-pinned" in human.stdout and "listeners=outbound,inbound,hbone" in human.stdout
        # connect: 8 cgroup links (connect4/6, sockops, getpeername4/6, getsockopt, bind4/6);
        # sk_lookup mode: the bind guard only; DNS capture (on by default): sendmsg4/6,
        # recvmsg4/6, and connect4/6, getpeername4/6 in sk_lookup mode; both: the pod's
        # sk_lookup netns link
        assert len(links) == (13 if mode == "connect" else 11)
        assert links <= _link_ids()

        with connect_from(topo.peer, topo.pod_ip4, 8080):
            first.send("accept-inbound")
            assert first.reply() == {"ip": topo.pod_ip4, "port": 8080}

        first.finish("exit-keep")  # zt stops (or crashes): its listeners close
        code, st = _status(pin_dir)
        assert code == 0 and st["pods"][0]["listeners"] == []
        assert {link["link_id"] for link in st["links"]} == links  # still attached
        # inbound: SK_DROP -> RST; in sk_lookup mode the capture route loops that RST back into
        # the pod (see tests/packets), so the client only times out
        refused = ConnectionRefusedError if mode == "connect" else TimeoutError
        with pytest.raises(refused):
            connect_from(topo.peer, topo.pod_ip4, 8080, timeout=1.5).close()
        remote = app_server(topo.peer, 8080)
        try:
            # outbound: connect mode rewrites to a closed 15001: refused. sk_lookup mode loops
            # the SYN and SK_DROPs it; the kernel's RST would need the non-local source address
            # of the remote, which only a transparent socket may use, so none is sent: the app
            # times out. Either way nothing reaches the remote.
            with pytest.raises(refused):
                connect_from(topo.pod, topo.peer_ip4, 8080, timeout=1.5).close()
            assert nothing_pending(remote), "outbound bypassed zt while it was down"
        finally:
            remote.close()
        assert nothing_pending(app), "inbound bypassed zt while it was down"

        second = Worker(pin_dir, topo, mode)  # the restarted zt re-opens the pins
        assert second.reply()["ready"]
        code, st = _status(pin_dir)
        assert st["pods"][0]["listeners"] == ["outbound", "inbound", "hbone"]
        assert {link["link_id"] for link in st["links"]} == links  # the same links, re-used
        with connect_from(topo.peer, topo.pod_ip6, 9999):
            second.send("accept-inbound")
            got = second.reply()
            assert (ipaddress.ip_address(got["ip"]), got["port"]) == (
                ipaddress.ip_address(topo.pod_ip6),
                9999,
            )
        second.finish("exit-detach")
        assert not pin_dir.exists()
        assert not (links & _link_ids()), "links left after detach"
        assert not routing.installed(topo.pod_path), "policy routing left after detach"
        code, st = _status(pin_dir)
        assert code == 2 and st == {"running": False, "pin_dir": str(pin_dir)}
    finally:
        first.kill()
        if second is not None:
            second.kill()
        app.close()


def test_status_when_not_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["capture", "status", "--pin-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "capture is not running" in result.stderr


def test_reopen_checks_the_mode(pin_dir: Path) -> None:
    cap = Capture.open("connect", pin_dir=pin_dir)
    cap.close(detach=False)  # a daemon that stopped: pins stay
    assert (pin_dir / "link_zt_connect4").exists()
    with pytest.raises(CaptureError, match="runs 'connect'"):
        Capture.open("sklookup", pin_dir=pin_dir)
    with pytest.raises(CaptureError, match=r"dns: got False, but .* runs with dns=True"):
        Capture.open("connect", pin_dir=pin_dir, dns=False)
    again = Capture.open("connect", pin_dir=pin_dir)  # re-opened, not compiled again
    try:
        assert again.mode == "connect" and again.dns
        assert {link.program for link in again.status().links} == {
            "zt_connect4",
            "zt_connect6",
            "zt_sockops",
            "zt_getpeername4",
            "zt_getpeername6",
            "zt_getsockopt",
            "zt_bind4",
            "zt_bind6",
            "zt_sendmsg4",
            "zt_sendmsg6",
            "zt_recvmsg4",
            "zt_recvmsg6",
        }
    finally:
        again.close(detach=True)
    assert not pin_dir.exists()


def test_pins_of_another_build_are_refused_and_removable(pin_dir: Path) -> None:
    """An upgrade: pins without a map this build needs are named, not half re-opened, and
    `zt capture remove` still clears them (links detach with their last reference)."""
    cap = Capture.open("connect", pin_dir=pin_dir)
    cap.close(detach=False)
    (pin_dir / "zt_orig_app").unlink()  # as if pinned by a build before that map existed
    with pytest.raises(
        CaptureIncompatibleError, match=r"another zt build \(no zt_orig_app\)"
    ) as err:
        Capture.open("connect", pin_dir=pin_dir)
    assert err.value.reason == "capture_incompatible_pins"
    result = CliRunner().invoke(cli_app, ["capture", "remove", "--pin-dir", str(pin_dir)])
    assert result.exit_code == 0, result.output
    assert not pin_dir.exists()
    fresh = Capture.open("connect", pin_dir=pin_dir)  # compiled and attached anew
    try:
        assert len(fresh.status().links) == 12  # 8 + DNS capture's sendmsg4/6, recvmsg4/6
    finally:
        fresh.close(detach=True)
