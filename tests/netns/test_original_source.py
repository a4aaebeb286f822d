"""Original source in a pod netns, both outbound modes (zt/capture/origsrc.py): zt's delivery
from the caller's IP reaches the app (sk_lookup passes it by its zt_deliveries 4-tuple on lo),
the app's replies come back to zt's socket, and un-enrolling removes the reply routing. The
sk_lookup mode's hard case: a caller whose IP is another enrolled sk_lookup pod's (a same-node
pod), whose own SYNs also arrive on lo; the pod's app still goes out through 15001."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.fixtures import Pod, enrolled_pod, open_listeners
from tests.netns.sockets import connect_from
from tests.netns.topo import Topology, build
from zt.addr import SocketAddr
from zt.capture import PodCapture, bpfsys, maps, origsrc, parse_ips
from zt.capture.netns import run_in_netns
from zt.node.podnet import PodNet

pytestmark = pytest.mark.root

APP_PORT = 8080


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


def test_unenroll_removes_the_reply_routing(pod: Pod) -> None:
    path = pod.topo.pod_path
    assert origsrc.installed(path) and _fwmark_accept(path) == "1"
    pod.capture.unenroll(pod.spec.name)
    assert not origsrc.installed(path) and _fwmark_accept(path) == "0"


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


def _fwmark_accept(netns: Path) -> str:
    return run_in_netns(netns, Path("/proc/sys/net/ipv4/tcp_fwmark_accept").read_text).strip()
