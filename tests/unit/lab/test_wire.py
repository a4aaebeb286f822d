"""The node-link verdict (zt.lab.wire.analyse): pure, over hand-made segments and scapy packets."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from zt.lab import wire
from zt.lab.wire import Segment

A, B, EXT = "10.1.0.2", "10.2.0.2", "10.255.0.200"
MESH = {A, B}
MARK = b"ZT-DEMO-MARK"


def record(kind: int, body: bytes, version: int = 0x0303) -> bytes:
    return bytes([kind]) + version.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def tls_stream(n: int = 5) -> bytes:
    hello = record(22, os.urandom(300), 0x0301)
    return hello + b"".join(record(23, os.urandom(1000 + i)) for i in range(n))


def flow(
    data: bytes, *, isn: int = 1000, mss: int = 700, syn: bool = True, port: int = 15008
) -> list[Segment]:
    segs = [Segment(A, B, "tcp", 40000, port, isn, wire.SYN)] if syn else []
    for off in range(0, len(data), mss):
        seq = (isn + 1 + off) % 2**32
        segs.append(Segment(A, B, "tcp", 40000, port, seq, wire.ACK, data[off : off + mss]))
    return segs


def test_tls_flow_from_syn_passes_and_counts_records() -> None:
    report = wire.analyse(flow(tls_stream(5)), MESH, MARK)
    assert report.ok, report
    assert (report.tls_records, report.whole_flows, report.flows) == (6, 1, 1)


def test_clear_payload_is_caught_twice_marker_and_not_tls() -> None:
    report = wire.analyse(flow(MARK * 200), MESH, MARK)
    assert not report.ok
    assert report.in_clear and report.not_tls


def test_traffic_between_pods_not_on_15008_is_flagged() -> None:
    report = wire.analyse(flow(tls_stream(), port=8080), MESH, MARK)
    assert not report.ok and len(report.not_hbone) == len(flow(tls_stream(), port=8080))
    icmp = Segment(A, B, "icmp")
    assert wire.analyse([*flow(tls_stream()), icmp], MESH, MARK).not_hbone == (icmp,)


def test_traffic_to_outside_hosts_is_not_judged_by_port_but_by_marker() -> None:
    outside = [Segment(A, EXT, "tcp", 40001, 8080, 5, wire.ACK, b"hello")]
    report = wire.analyse([*flow(tls_stream()), *outside], MESH, MARK)
    assert report.ok and report.packets == len(flow(tls_stream()))
    leaked = [Segment(A, EXT, "tcp", 40001, 8080, 5, wire.ACK, MARK)]
    assert wire.analyse([*flow(tls_stream()), *leaked], MESH, MARK).in_clear


def test_a_pooled_tunnel_caught_mid_flow_is_aligned_to_record_boundaries() -> None:
    data = tls_stream(8)
    cut = flow(data, syn=False)[2:]  # neither the SYN nor the first 1400 bytes were captured
    stream, from_syn = wire.reassemble(cut)
    assert not from_syn and stream == data[1400:]
    report = wire.analyse(cut, MESH, MARK)
    assert report.ok, report
    assert report.tls_records >= 2


def test_random_bytes_mid_flow_are_not_tls() -> None:
    junk = os.urandom(40000)
    with pytest.raises(wire.NotTls):
        wire.tls_aligned(junk, from_syn=False)
    assert wire.analyse(flow(junk, syn=False), MESH, MARK).not_tls


def test_reassembly_orders_segments_across_sequence_wraparound_and_stops_at_a_gap() -> None:
    data = tls_stream(3)
    segs = flow(data, isn=2**32 - 500)
    stream, from_syn = wire.reassemble(list(reversed(segs)))
    assert from_syn and stream == data
    gapped = [s for i, s in enumerate(segs) if i != 2]
    assert wire.reassemble(gapped)[0] == data[:700]


def test_tls_records_rejects_bad_headers_and_allows_a_cut_last_record() -> None:
    assert wire.tls_records(record(23, b"x" * 100)[:50]) == 1
    with pytest.raises(wire.NotTls):
        wire.tls_records(record(99, b"x"))
    with pytest.raises(wire.NotTls):
        wire.tls_records(record(23, b"x", version=0x0200))
    with pytest.raises(wire.NotTls):
        wire.tls_records(bytes([23, 3, 3, 0xFF, 0xFF]))


def test_nothing_captured_is_not_a_pass() -> None:
    assert not wire.analyse([], MESH, MARK).ok


def test_scapy_packets_become_segments() -> None:
    v4 = Ether() / IP(src=A, dst=B) / TCP(sport=1, dport=15008, seq=7, flags="PA") / Raw(b"hi")
    seg = wire.to_segment(Ether(bytes(v4)))
    assert seg == Segment(A, B, "tcp", 1, 15008, 7, 0x18, b"hi")
    v6 = Ether() / IPv6(src="fd00:1::2", dst="fd00:2::2") / TCP(sport=2, dport=3, flags="S")
    seg6 = wire.to_segment(Ether(bytes(v6)))
    assert seg6 is not None and (seg6.src, seg6.flags, seg6.payload) == ("fd00:1::2", 0x02, b"")
    assert wire.to_segment(Ether() / Raw(b"x")) is None
