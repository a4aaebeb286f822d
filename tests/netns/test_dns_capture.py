"""DNS capture (docs/design.md §6, DNS): in an enrolled pod, UDP and TCP to port 53 reach the DNS
proxy on 127.0.0.1:15053 / [::1]:15053 inside the pod (here a test responder on the sockets
zt.capture.netns.open_dns_sockets makes); real resolvers (dig, glibc through getent and Python)
get its answers; the reply's source (recvfrom, what musl and c-ares check) and getpeername() show
the server the app asked. One pod per outbound mode serves every test of this module."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import TCP, UDP

from tests.netns.dns_responder import ANSWER_A, ANSWER_AAAA, Responder, answer
from tests.netns.fixtures import Pod, enrolled_pod
from tests.netns.sockets import norm
from tests.netns.topo import build
from tests.packets.sniff import sniffing
from zt.capture.netns import marked_socket, open_dns_sockets, run_in_netns

pytestmark = pytest.mark.root

# DNS servers the pod is configured with: routed out of the pod (default route to the peer), where
# nothing answers; only capture can make them answer.
SERVER4 = "10.99.0.53"
SERVER4_B = "10.99.0.54"
SERVER6 = "fd00:99::53"
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*


@dataclass
class DnsPod:
    pod: Pod
    responder: Responder

    @property
    def ns(self) -> str:
        return self.pod.topo.pod

    def counters(self) -> dict[str, int]:
        return self.pod.capture.counters()


@pytest.fixture(scope="module", params=["connect", "sklookup"])
def dns(request: pytest.FixtureRequest) -> Iterator[DnsPod]:
    topo = build()
    etc = NETNS_ETC / topo.pod
    try:
        enrolled = enrolled_pod(topo, request.param)
        pod = next(enrolled)
        try:
            responder = Responder(open_dns_sockets(topo.pod))
            try:
                yield DnsPod(pod, responder)
            finally:
                responder.close()
        finally:
            enrolled.close()  # its finally closes the capture and the listeners
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when no other netns keeps files there
        topo.remove()


def _run(cmd: list[str], timeout: float = 10) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{cmd}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _dig(d: DnsPod, server: str, name: str, *extra: str) -> str:
    """dig inside the pod netns (nsenter keeps the cgroup and mounts; dig checks the reply's
    source against the server it asked and waits on otherwise)."""
    cmd = ["nsenter", f"--net=/run/netns/{d.ns}", "dig", f"@{server}", name, "A", "+short"]
    return _run([*cmd, "+tries=1", "+time=2", *extra]).strip()


def _resolv_conf(d: DnsPod, server: str) -> None:
    etc = NETNS_ETC / d.ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {server}\noptions timeout:2 attempts:1\n")


def _query(name: str, qtype: int = 1, qid: int = 0x2A2A) -> bytes:
    """RFC 1035 4.1: a standard query with RD for one name."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _port53(p: Any) -> bool:
    layer = p[UDP] if p.haslayer(UDP) else p[TCP] if p.haslayer(TCP) else None
    return layer is not None and 53 in (layer.sport, layer.dport)


def _to_proxy(p: Any) -> bool:
    layer = p[UDP] if p.haslayer(UDP) else p[TCP] if p.haslayer(TCP) else None
    return layer is not None and layer.dport == 15053


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after[k] - before[k] for k in after if k.startswith("dns_") and after[k] != before[k]
    }


def test_dig_over_udp_and_tcp_never_leaves_the_pod(dns: DnsPod) -> None:
    before, asked = dns.counters(), len(dns.responder.queries)
    with (
        sniffing(dns.ns, "eth0", _port53) as on_wire,
        sniffing(dns.ns, "lo", _to_proxy) as on_lo,
    ):
        for server in (SERVER4, SERVER6):
            assert _dig(dns, server, "web.zt.test") == ANSWER_A
            assert _dig(dns, server, "web.zt.test", "+tcp") == ANSWER_A
        time.sleep(0.2)
    assert not on_wire, f"DNS left the pod: {[p.summary() for p in on_wire]}"
    proxied = {(p[UDP] if p.haslayer(UDP) else p[TCP]).name for p in on_lo}
    assert proxied == {"UDP", "TCP"}
    got = dns.responder.queries[asked:]
    assert [(q.transport, norm(q.client[0]), q.name) for q in got] == [
        ("udp", ipaddress.ip_address("127.0.0.1"), "web.zt.test"),
        ("tcp", ipaddress.ip_address("127.0.0.1"), "web.zt.test"),
        ("udp", ipaddress.ip_address("::1"), "web.zt.test"),
        ("tcp", ipaddress.ip_address("::1"), "web.zt.test"),
    ]
    delta = _delta(before, dns.counters())
    assert delta.pop("dns_reply_rewrite") >= 2  # one per UDP answer dig read with its source
    assert delta == {
        "dns_redirect_udp4": 1,
        "dns_redirect_tcp4": 1,
        "dns_redirect_udp6": 1,
        "dns_redirect_tcp6": 1,
    }


def test_glibc_resolves_through_the_proxy(dns: DnsPod) -> None:
    """getent and Python's getaddrinfo (glibc: a connected UDP socket, A and AAAA in parallel),
    with an IPv4 then an IPv6 nameserver in the pod's resolv.conf."""
    before = dns.counters()
    exec_in_pod = ["ip", "netns", "exec", dns.ns]
    _resolv_conf(dns, SERVER4)
    out = _run([*exec_in_pod, "getent", "ahostsv4", "api.zt.test"])
    assert out.split()[0] == ANSWER_A
    _resolv_conf(dns, SERVER6)
    script = (
        "import socket;"
        "print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo('api.zt.test', 80,"
        " proto=socket.IPPROTO_TCP)})))"
    )
    out = _run([*exec_in_pod, sys.executable, "-c", script])
    assert out.split() == sorted([ANSWER_A, ANSWER_AAAA])
    delta = _delta(before, dns.counters())
    assert delta["dns_redirect_udp4"] >= 1 and delta["dns_redirect_udp6"] >= 1
    assert delta["dns_reply_rewrite"] >= 3  # getent: A; Python: A and AAAA


def test_unconnected_sockets_see_the_server_they_asked(dns: DnsPod) -> None:
    """musl's way: one unconnected dual-stack socket for every nameserver, several in flight; and
    one IPv4 socket asking two servers in turn."""

    def ask() -> tuple[set[tuple[str, int]], list[tuple[str, int]]]:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as both:
            both.settimeout(3)
            both.sendto(_query("a.zt.test", qid=1), (f"::ffff:{SERVER4}", 53))
            both.sendto(_query("b.zt.test", qid=2), (SERVER6, 53))
            sources = set()
            for _ in range(2):
                reply, src = both.recvfrom(512)
                assert reply[:2] in (b"\0\1", b"\0\2")
                sources.add((src[0], src[1]))
        turns = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            v4.settimeout(3)
            for server in (SERVER4, SERVER4_B):
                v4.sendto(_query("c.zt.test"), (server, 53))
                _, src = v4.recvfrom(512)
                turns.append(src)
        return sources, turns

    sources, turns = run_in_netns(dns.ns, ask)
    assert sources == {(f"::ffff:{SERVER4}", 53), (SERVER6, 53)}
    assert turns == [(SERVER4, 53), (SERVER4_B, 53)]


def test_connected_udp_and_tcp_show_the_original_server(dns: DnsPod) -> None:
    before = dns.counters()

    def ask() -> tuple[tuple[str, int], tuple[str, int], tuple[str, int], bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(3)
            udp.connect((SERVER4, 53))
            peer_udp = udp.getpeername()
            udp.send(_query("d.zt.test", qid=7))
            reply, src = udp.recvfrom(512)
            assert reply == answer(_query("d.zt.test", qid=7))
        with socket.create_connection((SERVER6, 53), timeout=3) as tcp:
            peer_tcp = tcp.getpeername()[:2]
            msg = _query("e.zt.test", qtype=28, qid=8)
            tcp.sendall(struct.pack("!H", len(msg)) + msg)
            size = struct.unpack("!H", tcp.recv(2, socket.MSG_WAITALL))[0]
            got = tcp.recv(size, socket.MSG_WAITALL)
        return peer_udp, src, peer_tcp, got

    peer_udp, src, peer_tcp, got = run_in_netns(dns.ns, ask)
    assert peer_udp == (SERVER4, 53) and src == (SERVER4, 53)
    assert peer_tcp == (SERVER6, 53)
    assert got == answer(_query("e.zt.test", qtype=28, qid=8))
    after = dns.counters()
    assert after["sockops_keyed"] == before["sockops_keyed"], "DNS was keyed for 15001"
    assert after["peername_rewrite"] - before["peername_rewrite"] == 2


def test_zt_sockets_and_in_pod_servers_are_left_alone(dns: DnsPod) -> None:
    """The proxy's upstream queries (marked) reach the real server; a DNS server inside the pod
    (loopback, the pod's own IP) keeps its queries."""
    topo = dns.pod.topo
    before, asked = dns.counters(), len(dns.responder.queries)

    def upstream_server() -> tuple[socket.socket, socket.socket]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for sock in (udp, tcp):
            sock.settimeout(3)
            sock.bind((topo.peer_ip4, 53))
        tcp.listen(4)
        return udp, tcp

    def in_pod_server() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(3)
        sock.bind(("0.0.0.0", 53))
        return sock

    up_udp, up_tcp = run_in_netns(topo.peer, upstream_server)
    local = run_in_netns(topo.pod, in_pod_server)
    try:

        def send() -> None:
            with marked_socket(socket.AF_INET, kind=socket.SOCK_DGRAM) as zt_udp:
                zt_udp.sendto(_query("up.zt.test"), (topo.peer_ip4, 53))
            with marked_socket(socket.AF_INET) as zt_tcp:
                zt_tcp.settimeout(3)
                zt_tcp.connect((topo.peer_ip4, 53))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as app:
                app.sendto(_query("lo.zt.test"), ("127.0.0.1", 53))
                app.sendto(_query("own.zt.test"), (topo.pod_ip4, 53))

        run_in_netns(topo.pod, send)
        msg, src = up_udp.recvfrom(512)
        assert msg == _query("up.zt.test") and src[0] == topo.pod_ip4
        conn, _ = up_tcp.accept()
        conn.close()
        assert local.recvfrom(512)[0] == _query("lo.zt.test")
        assert local.recvfrom(512)[0] == _query("own.zt.test")
    finally:
        for sock in (up_udp, up_tcp, local):
            sock.close()
    assert len(dns.responder.queries) == asked
    assert _delta(before, dns.counters()) == {"dns_skip_mark": 2, "dns_skip_local": 2}


def test_apps_cannot_bind_the_dns_proxy_port(dns: DnsPod) -> None:
    before = dns.counters()["bind_denied"]

    def bind(family: int, kind: int, host: str) -> None:
        with socket.socket(family, kind) as sock:
            sock.bind((host, 15053))

    for family, kind, host in (
        (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
        (socket.AF_INET6, socket.SOCK_STREAM, "::"),
    ):
        with pytest.raises(PermissionError):
            run_in_netns(dns.ns, lambda: bind(family, kind, host))  # noqa: B023 - run at once
    assert dns.counters()["bind_denied"] - before == 2


def test_status_reports_dns_capture(dns: DnsPod) -> None:
    st = dns.pod.capture.status()
    assert st.dns and [p.dns for p in st.pods] == [True]
    programs = {link.program for link in st.links}
    assert {"zt_sendmsg4", "zt_sendmsg6", "zt_recvmsg4", "zt_recvmsg6"} <= programs
    assert {"zt_connect4", "zt_connect6", "zt_getpeername4", "zt_getpeername6"} <= programs
    assert st.to_dict()["dns"] is True and st.to_dict()["pods"][0]["dns"] is True
