"""Each served pod's DNS proxy in the node (docs/dns.md "In the node"), proven with real clients in
the pods of the shared node lab: glibc (getent, Python), dig over UDP and TCP, an app connecting
by name. The pods' resolv.conf (zt.lab.dns) names 10.96.0.53, an address nothing in the lab has:
only capture makes it answer. The nodes' upstream is dnsmasq on the outside host."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from scapy.layers.inet import TCP, UDP

from tests.dns.conftest import mesh_snapshot
from tests.node.lab import Lab, handed_on, metric
from tests.packets.sniff import sniffing
from zt.capture.netns import run_in_netns
from zt.dns.errors import DnsBindError
from zt.dns.metrics import DnsMetrics
from zt.dns.upstream import parse_upstream
from zt.lab import dns as labdns
from zt.lab import mesh
from zt.lab.apps import exchange_by_name
from zt.node.dns import NodeDns
from zt.telemetry.metrics import Registry

pytestmark = pytest.mark.root

VIPS = {mesh.SERVICE_VIP4, mesh.SERVICE_VIP6}
SERVER = (labdns.POD_NAMESERVER, 53)
REQUESTS = "zt_dns_requests_total"


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def _in_pod(lab: Lab, pod: str, *argv: str, timeout: float = 20) -> str:
    """argv in the pod as its apps run: `ip netns exec`, so /etc/resolv.conf is the pod's."""
    cmd = ["ip", "netns", "exec", lab.pod(pod).netns, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _dig(lab: Lab, pod: str, *args: str) -> set[str]:
    out = _in_pod(lab, pod, "dig", "+short", "+tries=1", "+time=3", *args)
    return set(out.split())


def _getaddrinfo(lab: Lab, pod: str, name: str) -> set[str]:
    code = (
        "import socket,sys\n"
        "print(' '.join({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, "
        "type=socket.SOCK_STREAM)}))"
    )
    return set(_in_pod(lab, pod, sys.executable, "-c", code, name).split())


def test_pod_resolvers_get_the_service_vips_through_the_captured_proxy(lab: Lab) -> None:
    before = metric(lab.metrics("node1"), REQUESTS, result="mesh")
    short = "echo"  # completed by the pod's search list: echo.lab.svc.cluster.local (ndots:5)
    assert _in_pod(lab, "pod1-1", "getent", "ahostsv4", short).split()[0] == mesh.SERVICE_VIP4
    hosts = _in_pod(lab, "pod1-1", "getent", "hosts", mesh.SERVICE_HOST).split()
    assert hosts[0] in VIPS and hosts[1] == mesh.SERVICE_HOST
    assert _getaddrinfo(lab, "pod1-1", short) == VIPS  # glibc: A and AAAA
    assert _dig(lab, "pod1-1", mesh.SERVICE_HOST, "A") == {mesh.SERVICE_VIP4}
    assert _dig(lab, "pod1-1", "+tcp", mesh.SERVICE_HOST, "AAAA") == {mesh.SERVICE_VIP6}
    assert _dig(lab, "pod1-1", "+search", short, "A") == {mesh.SERVICE_VIP4}
    # answered by node1's proxy for pod1-1, from the mesh (at least one query per client above)
    assert metric(lab.metrics("node1"), REQUESTS, result="mesh") >= before + 6


def test_outside_names_are_forwarded_to_dnsmasq_once_then_cached(lab: Lab) -> None:
    name = labdns.OUTSIDE_NAMES[1]  # asked by this test only
    log = lab.state.dir / labdns.LOG
    asked = labdns.queries(log, name)
    for _ in range(5):
        assert _dig(lab, "pod2-1", name, "A") == {str(lab.plan.external_ipv4)}
    assert labdns.queries(log, name) - asked == 1
    metrics = lab.metrics("node2")
    assert metric(metrics, REQUESTS, result="cached", type="A") >= 4


def test_no_packet_of_a_mesh_name_query_leaves_the_pod(lab: Lab) -> None:
    """scapy on the outside end of pod1-1's veth (in node1's namespace): port 53 and the pod's
    nameserver never show up, while the HBONE connection of the same app does."""
    pod = lab.pod("pod1-1")

    def keep(p: Any) -> bool:
        return bool(p.haslayer(UDP) or p.haslayer(TCP))

    with sniffing(lab.plan.node(pod.node).netns, pod.host_veth, keep) as packets:
        assert _dig(lab, "pod1-1", mesh.SERVICE_HOST, "A") == {mesh.SERVICE_VIP4}
        assert _dig(lab, "pod1-1", "+tcp", mesh.SERVICE_HOST, "A") == {mesh.SERVICE_VIP4}
        ex = exchange_by_name(pod.netns, "echo", mesh.SERVICE_PORT, b"by name\n")
        assert ex.echoed, ex.error
    dns_packets = [p for p in packets if 53 in _ports(p) or _touches(p, labdns.POD_NAMESERVER)]
    assert dns_packets == []
    assert any(15008 in _ports(p) for p in packets), "the sniffer saw no HBONE either"


def _ports(p: Any) -> set[int]:
    layer = p[UDP] if p.haslayer(UDP) else p[TCP]
    return {int(layer.sport), int(layer.dport)}


def _touches(p: Any, ip: str) -> bool:
    return ip in (getattr(p.payload, "src", None), getattr(p.payload, "dst", None))


def test_an_app_connects_by_hostname_through_hbone(lab: Lab) -> None:
    a = lab.pod("pod1-1")
    offsets = lab.offsets()
    payload = b"by name " * 4096
    ex = exchange_by_name(a.netns, mesh.SERVICE_HOST, mesh.SERVICE_PORT, payload)
    assert ex.echoed and ex.received == payload, ex.error
    vip = ex.peer.rpartition(":")[0].strip("[]")
    assert vip in VIPS
    out = lab.wait_record("node1", offsets["node1"], direction="outbound", src__addr=ex.local)
    assert out.get("protocol") == "hbone" and out.get("dst.service") == mesh.SERVICE_HOST
    inb = lab.wait_record(
        "node2", offsets["node2"], direction="inbound", dst__hbone_addr=out.get("dst.hbone_addr")
    )
    assert inb.count("bytes_recv") == len(payload)


# -- bad input through the captured path ------------------------------------------------------
def _header(qid: int, qdcount: int = 1) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, qdcount, 0, 0, 0)  # RFC 1035 §4.1.1, RD


def _udp(lab: Lab, pod: str, *datagrams: bytes) -> list[bytes | None]:
    """Each datagram from an ordinary (unmarked) socket in the pod to its nameserver; the
    answer, or None when none came within 1 s."""

    def ask() -> list[bytes | None]:
        answers: list[bytes | None] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            for data in datagrams:
                sock.sendto(data, SERVER)
                try:
                    answers.append(sock.recv(65535))
                except TimeoutError:
                    answers.append(None)
        return answers

    return run_in_netns(lab.pod(pod).netns, ask, timeout=30)


def _tcp(lab: Lab, pod: str, *messages: bytes) -> list[bytes]:
    """The messages on one TCP connection to the pod's nameserver (RFC 7766 §8 framing)."""

    def ask() -> list[bytes]:
        answers = []
        with socket.create_connection(SERVER, timeout=5) as sock:
            for data in messages:
                sock.sendall(struct.pack("!H", len(data)) + data)
                head = _read(sock, 2)
                answers.append(_read(sock, struct.unpack("!H", head)[0]))
        return answers

    return run_in_netns(lab.pod(pod).netns, ask, timeout=30)


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def _rcode(wire: bytes | None) -> int | None:
    return None if wire is None else wire[3] & 0x0F


def test_bad_queries_get_formerr_or_nothing_and_the_next_query_is_answered(lab: Lab) -> None:
    good = dns.message.make_query(mesh.SERVICE_HOST, "A", id=0x4242).to_wire()
    loop = _header(0x1001) + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # a name pointing at itself
    cut = _header(0x1002) + b"\x04echo\x03la"  # a name cut short
    short = b"\x12\x34\x01"  # no header at all: dropped
    answers = _udp(lab, "pod2-2", short, loop, cut, good)
    assert answers[0] is None
    for answer, qid in ((answers[1], b"\x10\x01"), (answers[2], b"\x10\x02")):
        assert answer is not None and answer[:2] == qid and _rcode(answer) == dns.rcode.FORMERR
    reply = dns.message.from_wire(answers[3] or b"")
    assert reply.id == 0x4242 and reply.flags & dns.flags.AA
    assert {rd.to_text() for rr in reply.answer for rd in rr} == {mesh.SERVICE_VIP4}
    # a 64 KiB TCP message of junk after a header, then a good query on the same connection
    junk = _header(0x1003) + b"\xff" * (65535 - 12)
    big, after = _tcp(lab, "pod2-2", junk, good)
    assert _rcode(big) == dns.rcode.FORMERR and big[:2] == b"\x10\x03"
    assert dns.message.from_wire(after).answer


def test_a_taken_dns_port_fails_the_pod_start_with_a_message() -> None:
    """An app that bound 15053 in the pod before it was enrolled: the pod is not served (the
    daemon retries it), and the error says which port, where, and why."""
    netns = Path("/proc/self/ns/net")  # this test's own namespace stands in for the pod
    dns_node = NodeDns((parse_upstream("127.0.0.1"),), "--dns-upstream", DnsMetrics(Registry()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 15053))
        with pytest.raises(DnsBindError, match=r"dns proxy of pod p: cannot bind 15053 on "
                           r"127\.0\.0\.1/\[::1\] in /proc/self/ns/net \(Address already in use\)"):  # fmt: skip
            asyncio.run(dns_node.serve(netns, "p", mesh_snapshot))
