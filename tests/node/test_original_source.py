"""The node tier, original source (zt/capture/origsrc.py): the app's accept() sees the caller's
IP, as behind ztunnel, for cross-node HBONE (IPv4 and IPv6), same-node HBONE and plaintext; its
replies to that IP loop back to zt inside the pod (seen on the pod's lo, never on its eth0); with
`--no-original-source` the app sees the pod's own IP again. A HBONE CONNECT to a closed port gets its
503 at once (the kernel's RST loops back to zt: net.ipv4/ipv6.fwmark_reflect), not after the dial
timeout.

On the lab the node modules share (tests/node/conftest.py), in its capture mode (connect); the
sk_lookup mode's own case (a same-node caller whose SYNs also arrive on lo) is
tests/netns/test_original_source.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tests.node.lab import Lab, handed_on, hbone_status
from tests.packets.sniff import sniffing
from zt.capture.netns import run_in_netns
from zt.lab import logs, mesh
from zt.lab.apps import exchange
from zt.lab.topology import PodPlan

pytestmark = pytest.mark.root

CLOSED_PORT = 8099  # nothing listens there in the lab's pods


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def _accepted(lab: Lab, pod: PodPlan, offset: int) -> list[str]:
    """The peers the pod's app accepted since `offset` ("accept <ip:port> on <port>" lines)."""
    text = lab.app_log(pod.name).read_bytes()[offset:].decode()
    return [line.split()[1] for line in text.splitlines() if line.startswith("accept ")]


def _replies(packets: list[Any], app: str, peer: str) -> list[Any]:
    """The app's packets from `app` (its ip:port) to `peer` (the ip:port it accepted). By port
    too: with plaintext, zt's socket towards the client has the app's address as well."""
    (src, sport), (dst, dport) = _split(app), _split(peer)
    layer = IPv6 if ":" in src else IP
    return [
        p
        for p in packets
        if p.haslayer(layer)
        and (p[layer].src, p[TCP].sport, p[layer].dst, p[TCP].dport) == (src, sport, dst, dport)
    ]


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _talk(lab: Lab, client: PodPlan, server: PodPlan, v6: bool = False) -> tuple[str, str, str]:
    """client -> server's app; (the peer the app accepted, the app's address, the client's)."""
    dst, src = (server.ipv6, client.ipv6) if v6 else (server.ipv4, client.ipv4)
    offset = logs.size(lab.app_log(server.name))
    ex = exchange(client.netns, str(dst), mesh.APP_PORT, b"origsrc " + bytes(4096))
    assert ex.error == "" and len(ex.received) == ex.sent, ex
    peers = _accepted(lab, server, offset)
    assert len(peers) == 1, peers
    app = f"[{dst}]:{mesh.APP_PORT}" if v6 else f"{dst}:{mesh.APP_PORT}"
    return peers[0], app, str(src)


@pytest.mark.parametrize(
    ("case", "client_name", "v6"),
    [
        ("cross-node HBONE", "pod1-1", False),
        ("cross-node HBONE (IPv6)", "pod1-1", True),
        ("same node", "pod2-2", False),
        ("plaintext", "pod1-2", False),  # mesh.tcp_pod: no HBONE, reaches pod2-1's :15006
    ],
)
def test_app_sees_the_callers_ip_and_replies_stay_in_the_pod(
    lab: Lab, case: str, client_name: str, v6: bool
) -> None:
    server, client = lab.pod("pod2-1"), lab.pod(client_name)
    with sniffing(server.netns, "lo") as on_lo, sniffing(server.netns, "eth0") as on_eth0:
        peer, app, src = _talk(lab, client, server, v6)
    assert _split(peer)[0] == src, f"{case}: the app saw {peer}, expected the caller {src}"
    assert _replies(on_lo, app, peer), f"{case}: no reply of the app to {peer} looped back on lo"
    leaked = _replies(on_eth0, app, peer)
    assert not leaked, f"{case}: the app's replies left the pod: {leaked[:3]}"


def test_a_connect_to_a_closed_port_gets_503_at_once(lab: Lab) -> None:
    server, client = lab.pod("pod2-1"), lab.pod("pod1-1")
    started = time.monotonic()
    assert hbone_status(lab, client, server, str(server.ipv4), CLOSED_PORT) == 503
    took = time.monotonic() - started
    print(f"503 for a closed port after {took * 1000:.0f} ms (TLS handshake included)")
    assert took < 3.0, f"503 after {took:.1f} s: the app's RST did not come back to zt"


def test_no_original_source_delivers_from_the_pods_ip(lab: Lab) -> None:
    server, client = lab.pod("pod2-1"), lab.pod("pod1-1")
    state = lab.state
    lab.state = dataclasses.replace(state, node_args=(*state.node_args, "--no-original-source"))
    try:
        lab.restart("node2")
        assert not _fwmark_accept(server), "the reply routing stayed with original source off"
        peer, _, _ = _talk(lab, client, server)
        assert _split(peer)[0] == str(server.ipv4)  # the pod's own IP, as before original source
    finally:
        lab.state = dataclasses.replace(lab.state, node_args=state.node_args)
        lab.restart("node2")
    assert _fwmark_accept(server)


def _fwmark_accept(pod: PodPlan) -> bool:
    path = Path("/proc/sys/net/ipv4/tcp_fwmark_accept")
    return run_in_netns(pod.netns, lambda: path.read_text().strip() == "1")
