"""Original source in a pod netns, both outbound modes (zt/capture/origsrc.py): zt's delivery
from the caller's IP reaches the app (sk_lookup passes it by its zt_deliveries 4-tuple on lo),
the app's replies come back to zt's socket, and un-enrolling removes the reply routing. The
sk_lookup mode's hard case: a caller whose IP is another enrolled sk_lookup pod's (a same-node
pod), whose own SYNs also arrive on lo; the pod's app still goes out through 15001. A closed app
port refuses zt's delivery at once (the kernel's RST takes the SYN's mark back to zt); the reply
routing is installed and removed by presence (a previous run's, a half-installed one), giving the
pod back its own sysctls; a full table of deliveries in flight falls back to the pod's IP."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.fixtures import Pod, enrolled_pod, open_listeners
from tests.netns.sockets import connect_from
from tests.netns.topo import Topology, build
from zt.addr import SocketAddr
from zt.capture import PodCapture, bpfsys, maps, origsrc, parse_ips
from zt.capture.errors import BpfSyscallError
from zt.capture.netns import run_in_netns
from zt.node import podnet
from zt.node.podnet import PodNet
from zt.telemetry.metrics import Registry

pytestmark = pytest.mark.root

APP_PORT = 8080
CLOSED_PORT = 8081  # nothing listens there


@pytest.fixture(params=["connect", "sklookup"])
def pod(request: pytest.FixtureRequest, topo: Topology) -> Iterator[Pod]:
    yield from enrolled_pod(topo, request.param, original_source=True)


@pytest.fixture
def app(topo: Topology) -> Iterator[socket.socket]:
    """The pod's app: a dual-stack listener on [::]:8080 (5 s accept timeout)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", APP_PORT))
        sock.listen(16)
        return sock

    sock = run_in_netns(topo.pod, make)
    sock.settimeout(5)
    with sock:
        yield sock


def _deliver(pod: Pod, app: socket.socket, source: str, target: str) -> str:
    """zt's delivery from `source` to the app at `target`:8080, a round trip of bytes; the
    address the app's accept() returned."""
    net = PodNet(pod.topo.pod, pod.capture)

    async def dial() -> socket.socket:
        return await net.connect_from(ipaddress.ip_address(source), SocketAddr.parse(target), 5)

    try:
        with asyncio.run(dial()) as zt_side:
            conn, peer = app.accept()
            with conn:
                zt_side.sendall(b"to the app")
                assert conn.recv(64) == b"to the app"
                conn.sendall(b"reply")  # to the caller's IP: must come back to zt's socket
                zt_side.settimeout(5)
                assert zt_side.recv(64) == b"reply"
                assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == maps.ZT_MARK_ORIGSRC
    finally:
        net.close()
    host = str(peer[0])
    return host.removeprefix("::ffff:") if "." in host else host


def _deliveries_left(pod: Pod) -> int:
    fd = pod.capture._tables.fds["zt_deliveries"]
    return len(bpfsys.map_keys(fd, maps.MAPS["zt_deliveries"][0]))


@pytest.mark.parametrize("family", [4, 6])
def test_the_app_sees_the_callers_ip(pod: Pod, app: socket.socket, family: int) -> None:
    topo = pod.topo
    source, target = (
        (topo.peer_ip4, f"{topo.pod_ip4}:{APP_PORT}")
        if family == 4
        else (topo.peer_ip6, f"[{topo.pod_ip6}]:{APP_PORT}")
    )
    before = pod.capture.counters()
    assert _deliver(pod, app, source, target) == source
    after = pod.capture.counters()
    assert after["lookup_delivery"] - before["lookup_delivery"] == 1
    assert after["lookup_inbound"] == before["lookup_inbound"]  # not steered to 15006
    assert _deliveries_left(pod) == 0  # the entry lives only while zt connects


@pytest.mark.parametrize("family", [4, 6])
def test_a_closed_app_port_refuses_at_once(pod: Pod, family: int) -> None:
    """Nothing listens on the port: the kernel answers zt's SYN with a RST that has no socket.
    net.ipv4/ipv6.fwmark_reflect give it the SYN's mark 0x53a, so it loops back to zt instead of
    leaving through eth0 to the caller's IP (then connect() would wait out its whole timeout)."""
    topo = pod.topo
    source, target = (
        (topo.peer_ip4, f"{topo.pod_ip4}:{CLOSED_PORT}")
        if family == 4
        else (topo.peer_ip6, f"[{topo.pod_ip6}]:{CLOSED_PORT}")
    )
    net = PodNet(topo.pod, pod.capture)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(net.connect_from(ipaddress.ip_address(source), SocketAddr.parse(target), 5))
    finally:
        net.close()
    took = time.monotonic() - started
    print(f"IPv{family} delivery to a closed port refused after {took * 1000:.1f} ms")
    assert took < 0.5, f"refused after {took:.2f} s: the RST did not come back to zt"
    assert _deliveries_left(pod) == 0


def test_unenroll_removes_the_reply_routing(pod: Pod) -> None:
    path = pod.topo.pod_path
    assert origsrc.installed(path) and origsrc.sysctls(path) == ("1", "1", "1")
    pod.capture.unenroll(pod.spec.name)
    assert not origsrc.installed(path) and origsrc.sysctls(path) == ("0", "0", "0")


def test_the_pods_own_sysctls_come_back(topo: Topology) -> None:
    """A pod that had tcp_fwmark_accept=1 before zt keeps it after un-enrol; the others return to
    0. The record is in the netns (its routes), so a second install keeps it."""
    _set_sysctl(topo.pod_path, "ipv4/tcp_fwmark_accept", "1")
    plan = origsrc.ReplyRouting.of(topo.pod_path, parse_ips([topo.pod_ip4, topo.pod_ip6]))
    try:
        origsrc.install(plan)
        origsrc.install(plan)
        assert origsrc.sysctls(topo.pod_path) == ("1", "1", "1")
    finally:
        origsrc.remove(plan)
    assert origsrc.sysctls(topo.pod_path) == ("1", "0", "0")
    assert not origsrc.installed(topo.pod_path)


def test_a_half_installed_reply_routing_is_repaired(pod: Pod, app: socket.socket) -> None:
    """A rule without its route (a crash mid-install): enrolling again adds the route back."""
    path = pod.topo.pod_path
    ip = ["ip", "-n", pod.topo.pod, "route", "del", "local", "default", "table", "102"]
    subprocess.run(ip, check=True, timeout=10)
    assert origsrc.installed(path)  # its rules are there
    pod.capture.enroll(pod.spec)
    topo = pod.topo
    assert _deliver(pod, app, topo.peer_ip4, f"{topo.pod_ip4}:{APP_PORT}") == topo.peer_ip4


def test_a_fresh_capture_without_original_source_removes_a_previous_runs(topo: Topology) -> None:
    """zt ran with original source and its capture went (`zt capture remove`, or unpinned): the
    netns kept the reply routing. The next run, without original source, takes it away."""
    plan = origsrc.ReplyRouting.of(topo.pod_path, parse_ips([topo.pod_ip4, topo.pod_ip6]))
    origsrc.install(plan)
    try:
        for pod in enrolled_pod(topo, "connect", original_source=False):
            assert not origsrc.installed(topo.pod_path)
            assert origsrc.sysctls(topo.pod_path) == ("0", "0", "0")
            assert not pod.spec.original_source
    finally:
        origsrc.remove(plan)


def test_a_full_table_of_deliveries_falls_back_to_the_pods_ip(
    pod: Pod, app: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    """The map refuses a new entry (E2BIG, as a full BPF hash map does): that one delivery comes
    from the pod's IP, counted and logged; no other delivery's entry is evicted."""
    topo = pod.topo
    full = BpfSyscallError("BPF_MAP_UPDATE_ELEM", errno.E2BIG)
    registry = Registry()
    net = PodNet(topo.pod, pod.capture, registry)

    async def dial() -> socket.socket:
        target = SocketAddr.parse(f"{topo.pod_ip4}:{APP_PORT}")
        return await net.connect_from(ipaddress.ip_address(topo.peer_ip4), target, 5)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.WARNING):
        patch.setattr(pod.capture._tables, "put_delivery", _raiser(full))
        patch.setattr(podnet, "_fallback_warnings", podnet.Throttle(podnet.WARN_INTERVAL))
        try:
            for _ in range(2):
                with asyncio.run(dial()):
                    conn, peer = app.accept()
                    conn.close()
                    assert peer[0].removeprefix("::ffff:") == topo.pod_ip4
        finally:
            net.close()
    assert registry.value(podnet.FALLBACK_METRIC) == 2
    warnings = [r for r in caplog.records if "instead of the caller's" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per interval


def _raiser(exc: Exception) -> object:
    def put(key: bytes) -> None:
        raise exc

    return put


def _set_sysctl(netns: Path, name: str, value: str) -> None:
    run_in_netns(netns, lambda: Path("/proc/sys/net", name).write_text(value))


@pytest.fixture
def neighbour(pod: Pod) -> Iterator[Topology]:
    """A second pod enrolled in the same capture (a pod of the same node)."""
    topo = build()
    listeners = None
    try:
        listeners = open_listeners(topo, pod.mode)
        ips = parse_ips([topo.pod_ip4, topo.pod_ip6])
        pod.capture.enroll(PodCapture("neighbour", topo.pod_path, ips, listeners))
        yield topo
    finally:
        if listeners is not None:
            for sock in (listeners.outbound, listeners.inbound_plain, listeners.inbound_hbone):
                sock.close()
        topo.remove()


def test_a_same_node_caller(pod: Pod, app: socket.socket, neighbour: Topology) -> None:
    """The caller's IP is another enrolled pod's: in the sk_lookup mode its own SYNs arrive on
    lo too, and sk_lookup's rule for them must not take zt's delivery."""
    topo = pod.topo
    caller = neighbour.pod_ip4
    assert _deliver(pod, app, caller, f"{topo.pod_ip4}:{APP_PORT}") == caller
    # the pod's app connecting to that pod is still captured (15001)
    with connect_from(topo.pod, caller, APP_PORT):
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            orig = pod.capture.original_destination(conn)
            assert (str(orig.ip), orig.port) == (caller, APP_PORT)
