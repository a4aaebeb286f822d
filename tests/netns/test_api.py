"""The typed surface of zt.capture without the kernel: host checks, map layouts, pod specs."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import netns as pyroute2_netns

from tests.netns.fixtures import Pod
from zt.capture import Capture, ListenerSockets, PodCapture, maps, parse_ips
from zt.capture.errors import (
    BccMissingError,
    CaptureBusyError,
    KernelHeadersMissingError,
    KernelTooOldError,
    NoCgroup2Error,
    NotRootError,
    PodNotEnrolledError,
    PodSpecError,
)
from zt.capture.hostcheck import HostFacts, evaluate, kernel_version
from zt.errors import UsageError
from zt.node.podapi import BadPodRequest, PodAdd, PodList, PodRemove, check_netns
from zt.node.podapi import serve as pod_api_serve
from zt.timescale import scaled

GOOD = HostFacts(
    euid=0,
    kernel="6.18.44",
    cgroup2=Path("/sys/fs/cgroup/unified"),
    bcc_importable=True,
    headers=True,
)


@pytest.mark.parametrize(
    ("change", "error", "fix"),
    [
        ({"euid": 1000}, NotRootError, "run zt as root"),
        ({"kernel": "5.10.0-28-amd64"}, KernelTooOldError, ">= 5.14"),
        ({"cgroup2": None}, NoCgroup2Error, "mount -t cgroup2"),
        ({"bcc_importable": False}, BccMissingError, "python3-bpfcc"),
        ({"headers": False}, KernelHeadersMissingError, "linux-headers-amd64"),
    ],
)
def test_host_checks_name_the_fix(change: dict[str, Any], error: type[Exception], fix: str) -> None:
    facts = dataclasses.replace(GOOD, **change)
    problem = evaluate(facts)
    assert isinstance(problem, error)
    assert fix in str(problem)


def test_host_is_fine() -> None:
    assert evaluate(GOOD) is None
    assert kernel_version("5.14.0") == (5, 14)
    assert kernel_version("weird") == (0, 0)


@given(st.ip_addresses(), st.integers(0, 65535), st.sampled_from([2, 10]))
def test_addr_layout_round_trips(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, family: int
) -> None:
    raw = maps.addr_key(ip, port, family)
    assert len(raw) == maps.MAPS["zt_orig_addr"][0]
    got = maps.decode_addr(raw)
    expected = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    assert (got.ip, got.port) == (expected, port)
    assert raw[16:18] == port.to_bytes(2, "big")  # network order, as the BPF side stores it


def test_pod_value_layout() -> None:
    raw = maps.pod_value(ipaddress.IPv4Address("10.0.0.1"), None, 7, 5)
    assert len(raw) == maps.MAPS["zt_pods"][1]
    assert raw[:4] == bytes([10, 0, 0, 1])
    assert maps.decode_pod(raw) == (7, 5)
    assert maps.decode_meta(maps.meta_value("a" * 100, "/x")) == ("a" * 63, "/x")
    assert maps.sum_percpu((3).to_bytes(8, "little") + (4).to_bytes(8, "little")) == 7


def test_counter_names_match_the_header() -> None:
    """maps.COUNTERS is the Python side of the ZT_C_* slots: same names, same order."""
    header = (Path(__file__).resolve().parents[2] / "bpf" / "zt_capture.h").read_text()
    slots = dict(re.findall(r"#define ZT_C_(\w+) (\d+)", header))
    assert slots.pop("MAX") == str(len(maps.COUNTERS))
    assert {name.lower(): int(i) for name, i in slots.items()} == {
        name: i for i, name in enumerate(maps.COUNTERS)
    }


def test_parse_ips_names_the_bad_field() -> None:
    with pytest.raises(PodSpecError, match=r"ips\[1\]: got 'nope', expected an IPv4 or IPv6"):
        parse_ips(["10.0.0.1", "nope"])


@pytest.mark.root
def test_pod_spec_validation(connect_pod: Pod) -> None:
    listeners = connect_pod.listeners
    ips = parse_ips(["10.9.0.1"])
    for kwargs, message in (
        ({"name": ""}, "name: got ''"),
        ({"ips": ()}, "ips: got ()"),
        ({"ips": parse_ips(["10.9.0.1", "10.9.0.2"])}, "at most one IPv4"),
        ({"ips": parse_ips(["127.0.0.1"])}, "expected a unicast pod address"),
    ):
        spec = {"name": "p", "netns": Path("/run/netns/x"), "ips": ips, "listeners": listeners}
        with pytest.raises(PodSpecError, match=message):
            PodCapture(**{**spec, **kwargs})  # type: ignore[arg-type]
    wrong = socket.socket(socket.AF_INET6)
    try:
        wrong.bind(("::1", 0))
        with pytest.raises(PodSpecError, match=r"listeners.outbound: got a socket bound to port"):
            ListenerSockets(wrong, listeners.inbound_plain, listeners.inbound_hbone)
    finally:
        wrong.close()


@pytest.mark.root
def test_capture_operations_fail_typed(connect_pod: Pod) -> None:
    cap = connect_pod.capture
    with pytest.raises(CaptureBusyError):  # one compiled module per process
        Capture.open("connect")
    with pytest.raises(UsageError, match="mode: got 'tproxy'"):
        Capture.open("tproxy")  # type: ignore[arg-type]
    with pytest.raises(PodNotEnrolledError, match="got 'ghost'"):
        cap.unenroll("ghost")
    with pytest.raises(PodSpecError, match="/run/netns"):
        cap.enroll(
            PodCapture("x", Path("no-such-netns"), parse_ips(["10.9.0.1"]), connect_pod.listeners)
        )
    # an IP another enrolled pod owns is refused, naming it
    other_netns = connect_pod.topo.peer_path
    with pytest.raises(PodSpecError, match="which another enrolled pod owns"):
        cap.enroll(
            PodCapture(
                "dup", other_netns, parse_ips([connect_pod.topo.pod_ip4]), connect_pod.listeners
            )
        )


_MOUNT_CHECK = """
import ctypes, ctypes.util, os
from zt.capture.hostcheck import BPFFS, bpffs_mounted, ensure_bpffs
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
while bpffs_mounted():  # only in this private mount namespace
    assert libc.umount2(os.fsencode(BPFFS), 2) == 0, os.strerror(ctypes.get_errno())
print("before", bpffs_mounted())
ensure_bpffs()
print("after", bpffs_mounted())
"""


@pytest.mark.root
def test_bpffs_is_mounted_when_missing() -> None:
    """In a private mount namespace (unshare -m) without bpffs, ensure_bpffs() mounts it."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _MOUNT_CHECK],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["before", "False", "after", "True"]


# --- the node's pod API (zt/node/podapi.py) as root: real namespaces, a real non-root peer ------

_NOBODY_CLIENT = """
import json, os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except PermissionError as exc:
    print(json.dumps({"uid": os.getuid(), "connect": exc.strerror}))
    sys.exit(0)
try:
    s.sendall(b'{"op":"list"}\\n')
except BrokenPipeError:
    pass  # the server answered and closed before reading: the answer is still there
data = b""
while not data.endswith(b"\\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"uid": os.getuid(), "answer": data.decode()}))
"""


@pytest.fixture
def pod_api_dir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's tmp_path is 0700): the non-root client must reach
    the socket file so that the socket's own guards are what refuses it."""
    d = Path(tempfile.mkdtemp(prefix="ztcap-podapi-"))
    try:
        d.chmod(0o711)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def named_netns() -> Iterator[str]:
    name = f"ztcap-{os.getpid()}-podapi"
    pyroute2_netns.create(name)
    try:
        yield name
    finally:
        pyroute2_netns.remove(name)


@pytest.mark.root
def test_pod_api_refuses_non_root_peer_even_on_a_widened_socket(pod_api_dir: Path) -> None:
    path = pod_api_dir / "pods.sock"
    handled: list[object] = []

    async def handle(cmd: PodAdd | PodRemove | PodList) -> dict[str, object]:
        handled.append(cmd)
        return {"pods": []}

    async def as_nobody() -> dict[str, object]:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-I", "-c", _NOBODY_CLIENT, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    async def scenario() -> tuple[dict[str, object], dict[str, object], str]:
        server = await pod_api_serve(path, handle)
        try:
            mode = oct(stat.S_IMODE(path.stat().st_mode))
            refused_by_mode = await as_nobody()
            path.chmod(0o666)  # an operator's mistake: SO_PEERCRED still refuses uid 65534
            return refused_by_mode, await as_nobody(), mode
        finally:
            server.close()
            await server.wait_closed()

    by_mode, report, mode = uvloop.run(scenario())  # the daemon's loop
    assert mode == "0o600"
    assert by_mode == {"uid": 65534, "connect": "Permission denied"}
    assert report["uid"] == 65534
    assert json.loads(str(report["answer"])) == {
        "ok": False,
        "error": "pod API peer: got uid 65534, expected root (uid 0)",
        "reason": "pod_api_forbidden",
    }
    assert handled == []


@pytest.mark.root
def test_pod_api_accepts_real_network_namespaces(named_netns: str) -> None:
    """A name under /run/netns, its absolute path, and /proc/<pid>/ns/net of a process in another
    netns are accepted; the daemon's own netns is not (unit tests cover the other refusals)."""
    assert check_netns(named_netns) == Path("/run/netns") / named_netns
    assert check_netns(f"/run/netns/{named_netns}") == Path("/run/netns") / named_netns
    sleeper = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{sleeper.pid}/ns/net"
        deadline = time.monotonic() + scaled(10)
        while os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino:  # until unshare ran
            assert time.monotonic() < deadline, "unshare --net did not take effect"
            time.sleep(0.01)
        assert check_netns(path) == Path(path)
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(BadPodRequest, match="the node's own network namespace"):
        check_netns(f"/proc/{os.getpid()}/ns/net")
