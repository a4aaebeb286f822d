"""What capture looks like on the wire (docs/design.md §7), checked with scapy inside the netns."""

from __future__ import annotations

import time
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tests.netns.fixtures import Pod
from tests.netns.sockets import app_server, connect_from
from tests.packets.sniff import resets, sniffing, syns

pytestmark = pytest.mark.root


def _dst(p: Any) -> str:
    layer = p[IP] if p.haslayer(IP) else p[IPv6]
    return str(layer.dst)


def test_connect_mode_syn_goes_to_15001_on_pod_lo(connect_pod: Pod) -> None:
    pod = connect_pod
    remote = app_server(pod.topo.peer, 8080)
    try:
        with sniffing(pod.topo.pod, "lo") as on_lo, sniffing(pod.topo.pod, "eth0") as on_eth:
            with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
                conn, _ = pod.listeners.outbound.accept()
                conn.close()
            time.sleep(0.2)
        lo_syns = syns(on_lo)
        assert [(_dst(p), p[TCP].dport) for p in lo_syns] == [(pod.topo.pod_ip4, 15001)]
        assert not [p for p in syns(on_eth) if p[TCP].dport == 8080], "the app's SYN left the pod"
    finally:
        remote.close()


def test_sklookup_mode_syn_keeps_original_port(sklookup_pod: Pod) -> None:
    """sk_lookup does not rewrite: an inbound SYN to :8080 is :8080 on the pod's wire and the
    SYN-ACK comes from :8080; an outbound SYN looped by policy routing keeps its destination."""
    pod = sklookup_pod
    with sniffing(pod.topo.pod, "eth0") as on_eth:
        with connect_from(pod.topo.peer, pod.topo.pod_ip4, 8080):
            conn, _ = pod.listeners.inbound_plain.accept()
            conn.close()
        time.sleep(0.2)
    inbound = syns(on_eth)
    assert [(_dst(p), p[TCP].dport) for p in inbound] == [(pod.topo.pod_ip4, 8080)]
    synacks = [p for p in on_eth if p[TCP].flags & 0x12 == 0x12]
    assert [p[TCP].sport for p in synacks] == [8080]

    with sniffing(pod.topo.pod, "lo") as on_lo:
        with connect_from(pod.topo.pod, pod.topo.peer_ip6, 8443):
            conn, _ = pod.listeners.outbound.accept()
            conn.close()
        time.sleep(0.2)
    assert [(_dst(p), p[TCP].dport) for p in syns(on_lo)] == [(pod.topo.peer_ip6, 8443)]


@pytest.mark.parametrize("mode", ["connect", "sklookup"])
def test_with_zt_gone_syn_from_outside(request: pytest.FixtureRequest, mode: str) -> None:
    """zt's listeners closed: sk_lookup finds no sockmap entry and returns SK_DROP, which the
    kernel turns into "no socket" and answers with a RST. In connect mode that RST reaches the
    client. In sk_lookup mode the RST is unmarked pod TCP, so the capture rule routes it to the
    local table-100 route: it shows up on the pod's lo, never on the wire."""
    pod: Pod = request.getfixturevalue(f"{mode}_pod")
    app = app_server(pod.topo.pod, 8080)
    try:
        pod.close_listeners()
        with sniffing(pod.topo.peer, "eth0") as on_wire, sniffing(pod.topo.pod, "lo") as on_lo:
            with pytest.raises(ConnectionRefusedError if mode == "connect" else TimeoutError):
                connect_from(pod.topo.peer, pod.topo.pod_ip4, 8080, timeout=1.5).close()
            time.sleep(0.2)
        wire_rst = [p for p in resets(on_wire) if p[TCP].sport == 8080]
        lo_rst = [p for p in resets(on_lo) if p[TCP].sport == 8080]
        if mode == "connect":
            assert wire_rst and not lo_rst
        else:
            assert lo_rst and not wire_rst
        assert pod.capture.counters()["lookup_no_listener"] >= 1
    finally:
        app.close()
