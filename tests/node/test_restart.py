"""The node's promise: "Killing zt: enrolled pods fail closed (no bypass to the network); restarting zt
restores service without re-enrolling by hand"."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, handed_on
from zt.lab import logs, mesh, runner
from zt.lab.apps import connect_only, exchange

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def accepted(lab: Lab, app: str, offset: int) -> list[str]:
    path = lab.app_log(app)
    with open(path, "rb") as f:
        f.seek(offset)
        return [line for line in f.read().decode().splitlines() if line.startswith("accept")]


def eventually_echoes(netns: str, host: str, seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if exchange(netns, host, mesh.APP_PORT, b"back", timeout=3).echoed:
            return True
        time.sleep(0.3)
    return False


def test_killed_daemon_fails_closed_and_a_restart_restores_service(lab: Lab) -> None:
    a, b, plain = lab.pod("pod1-1"), lab.pod("pod2-1"), mesh.tcp_pod(lab.plan)
    ext = str(lab.plan.external_ipv4)
    assert exchange(a.netns, str(b.ipv4), mesh.APP_PORT, b"warm").echoed
    assert exchange(b.netns, ext, mesh.APP_PORT, b"warm").echoed

    pid = lab.pid("node2")
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while runner.alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not runner.alive(pid)
    seen_b, seen_ext = logs.size(lab.app_log(b.name)), logs.size(lab.app_log("ext"))

    into_b = exchange(a.netns, str(b.ipv4), mesh.APP_PORT, b"hbone-in", timeout=3)
    plain_into_b = exchange(plain.netns, str(b.ipv4), mesh.APP_PORT, b"plain-in", timeout=3)
    out_of_b = exchange(b.netns, ext, mesh.APP_PORT, b"out", timeout=3)
    for name, ex in (("hbone in", into_b), ("plaintext in", plain_into_b), ("out", out_of_b)):
        assert not ex.echoed and ex.received == b"", f"{name} got through a dead zt: {ex}"
    assert accepted(lab, b.name, seen_b) == [], "a connection reached pod2-1's app unproxied"
    assert [x for x in accepted(lab, "ext", seen_ext) if str(b.ipv4) in x] == []

    lab.restart("node2")  # same pin dir; no `zt pod add` by hand

    assert eventually_echoes(a.netns, str(b.ipv4)), runner.tail(lab.log("node2"))
    assert eventually_echoes(b.netns, ext)
    assert eventually_echoes(plain.netns, str(b.ipv4))


def pod_api(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    sock = str(lab.state.dir / f"{node}.sock")
    return subprocess.run(
        [str(runner.ZT), "pod", *args, "--pod-socket", sock, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_pod_api_removes_and_adds_a_pod_at_run_time(lab: Lab) -> None:
    a, b2 = lab.pod("pod1-1"), lab.pod("pod2-2")
    assert eventually_echoes(a.netns, str(b2.ipv4))
    listed = json.loads(pod_api(lab, "node2", "list").stdout)
    assert "lab/pod2-2" in [p["uid"] for p in listed["pods"]]
    try:
        removed = pod_api(lab, "node2", "remove", "lab/pod2-2")
        assert removed.returncode == 0, removed.stderr
        listed = json.loads(pod_api(lab, "node2", "list").stdout)
        assert "lab/pod2-2" not in [p["uid"] for p in listed["pods"]]
        offset = logs.size(lab.log("node1"))
        gone = exchange(a.netns, str(b2.ipv4), mesh.APP_PORT, b"to a removed pod", timeout=5)
        assert not gone.echoed
        rec = lab.wait_record("node1", offset, direction="outbound", src__addr=gone.local)
        assert rec.flags == "CONNECT", rec.fields  # nothing serves pod2-2's :15008 any more
    finally:
        added = pod_api(lab, "node2", "add", "lab/pod2-2", "--netns", b2.netns)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["added"]["identity"].endswith("/sa/sa-pod2-2")
    assert eventually_echoes(a.netns, str(b2.ipv4))


def test_a_pod_added_back_while_its_old_proxy_drains_stays_captured(lab: Lab) -> None:
    """`zt pod remove` waits for open connections to drain, then unenrolls the pod by name. A
    `zt pod add` of the same uid meanwhile (a CNI DEL then ADD) must not be undone by that
    unenroll: the new proxy starts once the old one is gone, and the pod stays enrolled."""
    a, b2 = lab.pod("pod1-1"), lab.pod("pod2-2")
    assert eventually_echoes(a.netns, str(b2.ipv4))
    held = connect_only(a.netns, str(b2.ipv4), mesh.APP_PORT)  # keeps the old proxy draining
    sock = str(lab.state.dir / "node2.sock")
    remove = subprocess.Popen(
        [str(runner.ZT), "pod", "remove", "lab/pod2-2", "--pod-socket", sock],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    procs = [remove]
    try:
        time.sleep(1.0)  # the remove is draining the held connection
        add = subprocess.Popen(
            [str(runner.ZT), "pod", "add", "lab/pod2-2", "--netns", b2.netns, "--pod-socket", sock],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(add)
        time.sleep(1.0)
        held.close()  # the drain ends: the old proxy unenrolls, then the new one starts
        _, err = remove.communicate(timeout=60)
        assert remove.returncode == 0, err
        _, err = add.communicate(timeout=60)
        assert add.returncode == 0, err
    finally:
        held.close()
        for proc in procs:  # ours, by PID: only if a wait above failed
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert lab.map_entries("node2")["zt_pods"] == 2  # both of node2's pods enrolled
    assert eventually_echoes(a.netns, str(b2.ipv4))


def test_sigterm_drains_an_open_tunnel_without_losing_a_byte(lab: Lab) -> None:
    """SIGTERM: not ready any more, open connections finish (within the drain deadline) with every
    byte echoed, then the daemon exits; a restart brings the node back."""
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    assert eventually_echoes(a.netns, str(b.ipv4))
    conn = connect_only(a.netns, str(b.ipv4), mesh.APP_PORT)
    sent = received = 0
    try:
        conn.settimeout(10)
        chunk = bytes(range(256)) * 64
        conn.sendall(chunk)
        sent += len(chunk)
        while received < sent:  # a round trip: the tunnel is up on node2 before the SIGTERM
            data = conn.recv(65536)
            assert data, "closed before the first echo"
            received += len(data)
        pid = lab.pid("node2")
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)  # draining now: not ready, the tunnel still open
        status = 0
        with contextlib.suppress(OSError):
            status = runner.http_get(
                lab.plan.node("node2").netns, runner.READY_PORT, "/healthz/ready"
            )[0]
        assert status != 200, "still ready while draining"
        try:
            for _ in range(20):
                conn.sendall(chunk)
                sent += len(chunk)
            conn.shutdown(socket.SHUT_WR)
            while data := conn.recv(65536):
                received += len(data)
        except OSError as exc:
            pytest.fail(
                f"tunnel broken while draining after {sent} B sent, {received} B back: {exc}\n"
                f"node1:\n{runner.tail(lab.log('node1'), 8)}\nnode2:\n{runner.tail(lab.log('node2'), 8)}"
            )
    finally:
        conn.close()
    assert received == sent, f"drain lost {sent - received} of {sent} bytes"
    end = time.monotonic() + 15
    while runner.alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not runner.alive(pid), "zt did not exit after its last connection closed"
    lab.restart("node2")
    assert eventually_echoes(a.netns, str(b.ipv4))
