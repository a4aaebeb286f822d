"""The asyncio adapters over loopback, against a real upstream: Debian's dnsmasq, whose query log
proves what reached it. Mesh names never leave zt; repeated names reach dnsmasq once; truncated
upstream answers are fetched over TCP; bad input never stops the next query."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from tests.dns.conftest import CLIENT, addresses
from zt.capture.netns import run_in_netns
from zt.dns.metrics import DnsMetrics
from zt.dns.server import DnsServer, ServerSettings
from zt.dns.upstream import Upstream, parse_resolv_conf, parse_upstream
from zt.errors import ZtError
from zt.lab.dnsmasq import Dnsmasq
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry

BIG = [f"198.51.100.{i}" for i in range(1, 101)]  # ~1.6 kB of A records: more than 512
HOSTS = {"web.example.org": ["192.0.2.10"], "big.example.org": BIG}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    # --edns-packet-max=512: dnsmasq truncates big answers over UDP, so zt must ask again on TCP
    with Dnsmasq(
        tmp_path_factory.mktemp("dnsmasq"), HOSTS, extra=["--edns-packet-max=512"]
    ) as server:
        yield server


def upstream_of(d: Dnsmasq) -> Upstream:
    return parse_upstream(f"{d.address}:{d.port}")


@asynccontextmanager
async def running(
    snapshot: Snapshot, upstreams: list[Upstream], metrics: DnsMetrics | None = None, **kw: float
) -> AsyncIterator[DnsServer]:
    settings = ServerSettings(port=0, **kw)  # type: ignore[arg-type]
    server = DnsServer(
        lambda: snapshot, upstreams, socket.socket, metrics, client_uid=CLIENT, settings=settings
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def ask_udp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    assert server.udp_address is not None
    host, port = server.udp_address
    return await dns.asyncquery.udp(q, host, port=port, timeout=3)


async def ask_tcp(server: DnsServer, q: dns.message.Message) -> dns.message.Message:
    assert server.tcp_address is not None
    host, port = server.tcp_address
    return await dns.asyncquery.tcp(q, host, port=port, timeout=3)


def q(name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


@pytest.mark.root
def test_mesh_names_stay_local_and_repeated_names_reach_dnsmasq_once(
    snapshot: Snapshot, upstream: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zt.dns")
    registry = Registry()
    metrics = DnsMetrics(registry)

    async def go() -> None:
        async with running(snapshot, [upstream_of(upstream)], metrics) as server:
            mesh = await ask_udp(server, q("reviews.default.svc.cluster.local."))
            assert addresses(mesh) == {"10.96.0.20"} and mesh.flags & dns.flags.AA
            absent = await ask_tcp(server, q("nope.default.svc.cluster.local."))
            assert absent.rcode() == dns.rcode.NXDOMAIN
            for _ in range(3):
                web = await ask_udp(server, q("web.example.org."))
                assert addresses(web) == {"192.0.2.10"}
            assert addresses(await ask_tcp(server, q("web.example.org."))) == {"192.0.2.10"}
            missing = await ask_udp(server, q("missing.example.org."))
            assert missing.rcode() == dns.rcode.NXDOMAIN  # dnsmasq's, forwarded

    asyncio.run(go())
    assert upstream.queries("web.example.org") == 1  # then the cache answered 3 times
    assert upstream.queries("reviews.default.svc.cluster.local") == 0
    assert upstream.queries("nope.default.svc.cluster.local") == 0
    value = registry.value
    assert value("zt_dns_requests_total", type="A", result="mesh") == 1
    assert value("zt_dns_requests_total", type="A", result="nxdomain") == 1
    assert value("zt_dns_requests_total", type="A", result="forwarded") == 2
    assert value("zt_dns_requests_total", type="A", result="cached") == 3
    assert (value("zt_dns_cache_hits_total"), value("zt_dns_cache_misses_total")) == (3, 2)
    assert value("zt_dns_upstream_requests_total", transport="udp") == 2
    text = registry.render()
    assert 'zt_dns_request_duration_seconds_count{result="cached"} 3.0' in text
    access = [r.getMessage() for r in caplog.records if r.name == "zt.dns"]
    assert (
        f"dns src={CLIENT} type=A name=reviews.default.svc.cluster.local. result=mesh records=1"
        in "\n".join(access)
    )
    assert sum("result=cached" in line for line in access) == 3


@pytest.mark.root
def test_past_the_forward_cap_queries_get_servfail_at_once(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    registry = Registry()

    async def go() -> None:
        ups = [upstream_of(upstream)]
        async with running(snapshot, ups, DnsMetrics(registry), max_forwards=0) as server:
            reply = await ask_udp(server, q("capped.example.org."))
            assert reply.rcode() == dns.rcode.SERVFAIL
            assert addresses(await ask_udp(server, q("reviews."))) == {"10.96.0.20"}

    asyncio.run(go())
    assert registry.value("zt_dns_requests_total", type="A", result="overloaded") == 1
    assert upstream.queries("capped.example.org") == 0


@pytest.mark.root
def test_truncated_upstream_answers_are_asked_again_over_tcp(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    registry = Registry()

    async def go() -> None:
        async with running(snapshot, [upstream_of(upstream)], DnsMetrics(registry)) as server:
            full = await ask_tcp(server, q("big.example.org."))
            assert addresses(full) == set(BIG)
            over_udp = await ask_udp(server, q("big.example.org."))  # cached; 512 bytes max
            assert over_udp.flags & dns.flags.TC and over_udp.answer == []
            edns = await ask_udp(server, q("big.example.org.", use_edns=0, payload=4096))
            assert addresses(edns) == set(BIG) and not edns.flags & dns.flags.TC

    asyncio.run(go())
    assert registry.value("zt_dns_upstream_requests_total", transport="tcp") == 1
    assert upstream.queries("big.example.org") == 2  # once over UDP (truncated), once over TCP


@pytest.mark.root
def test_tcp_answers_several_queries_in_order_survives_bad_ones_and_closes_when_idle(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    def framed(wire: bytes) -> bytes:
        return struct.pack("!H", len(wire)) + wire

    async def go() -> None:
        async with running(snapshot, [upstream_of(upstream)], tcp_idle_timeout=0.3) as server:
            assert server.tcp_address is not None
            reader, writer = await asyncio.open_connection(*server.tcp_address)
            first, last = q("reviews."), q("echo.shop.")
            huge = first.to_wire() + b"\x00" * (65535 - len(first.to_wire()))
            writer.write(framed(first.to_wire()) + framed(huge) + framed(b"abc"))
            writer.write(framed(last.to_wire()))
            answers = []
            for _ in range(3):  # the 3-byte message has no header: dropped, no answer
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                answers.append(dns.message.from_wire(await reader.readexactly(size)))
            assert [a.id for a in answers] == [first.id, first.id, last.id]
            assert [a.rcode() for a in answers] == [dns.rcode.NOERROR, dns.rcode.FORMERR, 0]
            assert addresses(answers[2]) == {"10.96.0.30"}
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 3) == b""  # idle: closed by zt
            assert time.monotonic() - started < 2
            writer.close()

    asyncio.run(go())


@pytest.mark.root
def test_udp_garbage_gets_formerr_or_nothing_and_the_next_query_is_served(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    async def go() -> None:
        async with running(snapshot, [upstream_of(upstream)]) as server:
            assert server.udp_address is not None
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_connect(s, server.udp_address)
                await loop.sock_sendall(s, b"\x00\x01")  # no header: dropped
                loop_ptr = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
                await loop.sock_sendall(s, loop_ptr)
                reply = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(s, 512), 3))
                assert (reply.id, reply.rcode()) == (7, dns.rcode.FORMERR)
            assert addresses(await ask_udp(server, q("reviews."))) == {"10.96.0.20"}

    asyncio.run(go())


@pytest.mark.root
def test_servfail_when_every_upstream_times_out_or_refuses(snapshot: Snapshot) -> None:
    registry = Registry()

    async def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))  # takes queries, never answers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                closed = probe.getsockname()[1]  # nothing listens there once closed
            ups = [parse_upstream(f"127.0.0.1:{silent.getsockname()[1]}"),
                   parse_upstream(f"127.0.0.1:{closed}")]  # fmt: skip
            async with running(snapshot, ups, DnsMetrics(registry), udp_timeout=0.2) as server:
                started = time.monotonic()
                reply = await ask_udp(server, q("www.example.org."))
                assert reply.rcode() == dns.rcode.SERVFAIL
                assert time.monotonic() - started < 1.5
                mesh = await ask_udp(server, q("reviews."))  # mesh names do not need them
                assert addresses(mesh) == {"10.96.0.20"}

    asyncio.run(go())
    assert registry.value("zt_dns_upstream_failures_total", reason="timeout") == 1
    assert registry.value("zt_dns_upstream_failures_total", reason="error") == 1
    assert registry.value("zt_dns_requests_total", type="A", result="servfail") == 1


@pytest.mark.root
def test_close_releases_every_socket_and_dig_gets_answers(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    dig = shutil.which("dig")
    assert dig is not None, "dig missing: make setup installs bind9-dnsutils"

    async def go() -> tuple[str, int]:
        async with running(snapshot, [upstream_of(upstream)]) as server:
            assert server.udp_address is not None
            host, port = server.udp_address
            for extra in ([], ["+tcp"]):
                out = await asyncio.to_thread(
                    subprocess.run,
                    [
                        dig,
                        f"@{host}",
                        "-p",
                        str(port),
                        "+short",
                        "+tries=1",
                        "+time=3",
                        *extra,
                        "reviews.default.svc.cluster.local.default.svc.cluster.local",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                assert out.stdout.split() == ["reviews.default.svc.cluster.local.", "10.96.0.20"]
            return host, port

    host, port = asyncio.run(go())
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as again:
            again.bind((host, port))  # free again: close() released it


def test_resolv_conf_and_upstream_forms(tmp_path: Path) -> None:
    text = "search default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n"
    text += "nameserver fd00::a\noptions ndots:5\n"
    assert [str(u) for u in parse_resolv_conf(text)] == ["10.96.0.10:53", "[fd00::a]:53"]
    assert str(parse_upstream("[fd00::a]:5353")) == "[fd00::a]:5353"
    assert str(parse_upstream("10.0.0.1:5353")) == "10.0.0.1:5353"
    for bad in ("dns.example", "10.0.0.1:0", "10.0.0.1:x", "[fd00::a]:99999"):
        with pytest.raises(ZtError, match="DNS upstream: got"):
            parse_upstream(bad)


@pytest.mark.root
def test_served_inside_a_pod_netns_with_upstreams_reached_from_the_node(
    snapshot: Snapshot, upstream: Dnsmasq
) -> None:
    """The wiring the node uses: listeners made in the pod's namespace by the socket maker,
    upstream sockets in zt's own, so a pod's 127.0.0.1:15053 answers names only the node's
    resolver (here dnsmasq on the node's loopback) knows."""
    name = f"ztdns-{os.getpid()}"
    pyroute2_netns.create(name)
    try:
        run_in_netns(name, _loopback_up)

        def in_pod(family: int, kind: int) -> socket.socket:
            return run_in_netns(name, lambda: socket.socket(family, kind))

        async def go() -> list[str]:
            server = DnsServer(lambda: snapshot, [upstream_of(upstream)], in_pod,
                               client_uid=CLIENT)  # fmt: skip
            await server.start()
            try:
                out = await asyncio.to_thread(
                    subprocess.run,
                    [
                        "ip",
                        "netns",
                        "exec",
                        name,
                        "dig",
                        "@127.0.0.1",
                        "-p",
                        "15053",
                        "+short",
                        "+tries=1",
                        "+time=3",
                        "reviews",
                        "web.example.org",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                return out.stdout.split()
            finally:
                await server.close()

        assert asyncio.run(go()) == ["10.96.0.20", "192.0.2.10"]
    finally:
        pyroute2_netns.remove(name)


def _loopback_up() -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
