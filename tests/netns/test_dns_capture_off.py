"""DNS capture switched off (Capture.open(dns=False), the node's `--no-dns`): a pod's port 53 is
ordinary traffic again, and 15053 an ordinary port (docs/design.md §6, DNS)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.netns.fixtures import Pod, enrolled_pod
from tests.netns.topo import Topology
from zt.capture.netns import run_in_netns

pytestmark = pytest.mark.root


@pytest.fixture
def pod_without_dns(topo: Topology) -> Iterator[Pod]:
    yield from enrolled_pod(topo, "connect", dns=False)


def test_port_53_is_left_alone(pod_without_dns: Pod) -> None:
    topo = pod_without_dns.topo

    def server() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        sock.bind((topo.peer_ip4, 53))
        return sock

    def app() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"query", (topo.peer_ip4, 53))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 15053))  # no guard on the DNS proxy's port

    upstream = run_in_netns(topo.peer, server)
    with upstream:
        run_in_netns(topo.pod, app)
        msg, src = upstream.recvfrom(64)
    assert (msg, src[0]) == (b"query", topo.pod_ip4)
    st = pod_without_dns.capture.status()
    assert not st.dns and [p.dns for p in st.pods] == [False]
    assert not {"zt_sendmsg4", "zt_recvmsg4"} & {link.program for link in st.links}
    counters = st.counters
    assert sum(v for k, v in counters.items() if k.startswith("dns_")) == 0
    assert counters["bind_denied"] == 0
