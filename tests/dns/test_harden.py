"""A hostile pod against its DNS proxy: queries dnspython would take long to parse never reach it,
a pod past its budget loses its excess UDP queries and waits on TCP, and a TCP client that
pipelines is answered as each answer is ready, while one that never reads is cut off. Loopback
only, no upstream but a tiny one of the test's own that answers late on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from tests.dns.conftest import CLIENT, addresses
from zt.dns.cache import Cache
from zt.dns.core import DnsCore, Reply
from zt.dns.metrics import DnsMetrics
from zt.dns.ratelimit import LimitLog, RateLimit, TokenBucket
from zt.dns.server import DnsServer, ServerSettings
from zt.dns.upstream import parse_upstream
from zt.dns.wire import MAX_OPTIONS, MAX_QUERY, Query, Transport, parse_query
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry

UDP, TCP = Transport.UDP, Transport.TCP
QUESTION = dns.message.make_query("reviews.", "A").to_wire()[12:]  # name, type, class
A_RECORD = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"


def header(
    qid: int = 0x4242, flags: int = 0x0100, *, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def opt(options: int, size: int = 0) -> bytes:
    """An OPT record (RFC 6891 §6.1.2) of `options` options of `size` bytes each."""
    data = b"".join(struct.pack("!HH", 65001 + i, size) + b"\x00" * size for i in range(options))
    return b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(data)) + data


# ~4,000 additional records: dnspython took ~0.4 s to parse this before the gate
HUGE = header(ar=4092) + QUESTION + A_RECORD * 4092


@pytest.mark.parametrize(
    ("wire", "reason", "rcode"),
    [
        (HUGE, "too_large", dns.rcode.FORMERR),
        (header(ar=1) + QUESTION + opt(1, MAX_QUERY), "too_large", dns.rcode.FORMERR),
        (header(qd=2) + QUESTION * 2, "question_count", dns.rcode.FORMERR),
        (header(an=1) + QUESTION + A_RECORD, "record_count", dns.rcode.FORMERR),
        (header(ns=1) + QUESTION + A_RECORD, "record_count", dns.rcode.FORMERR),
        (header(ar=2) + QUESTION + opt(0) + A_RECORD, "record_count", dns.rcode.FORMERR),
        (header(ar=1) + QUESTION + A_RECORD, "additional", dns.rcode.FORMERR),
        (header(ar=1) + QUESTION + opt(MAX_OPTIONS + 1), "additional", dns.rcode.FORMERR),
        (header(flags=0x2100, an=1000) + QUESTION, "not_implemented", dns.rcode.NOTIMP),  # NOTIFY
    ],
    ids=[
        "64k",
        "over-max",
        "two-questions",
        "answer",
        "authority",
        "two-additional",
        "not-opt",
        "options",
        "opcode",
    ],
)
def test_the_header_gate_rejects_before_parsing_and_the_next_query_is_served(
    snapshot: Snapshot, wire: bytes, reason: str, rcode: int
) -> None:
    core = DnsCore(lambda: snapshot, CLIENT, Cache(), rng=random.Random(7))
    for transport in (UDP, TCP):
        command = core.handle(wire, transport, 0.0)
        assert isinstance(command, Reply) and command.result == reason, command
        reply = dns.message.from_wire(command.wire)
        assert (reply.id, reply.rcode()) == (0x4242, rcode)
        served = core.handle(dns.message.make_query("reviews.", "A").to_wire(), transport, 0.0)
        assert isinstance(served, Reply) and served.result == "mesh"


def test_the_largest_query_the_gate_lets_through_is_parsed() -> None:
    name = b"\x01a" * 127 + b"\x00"  # 255 bytes, the most RFC 1035 §2.3.4 allows
    base = header(ar=1) + name + b"\x00\x01\x00\x01"
    room = MAX_QUERY - len(base) - len(opt(0)) - 4 * MAX_OPTIONS
    wire = base + opt(MAX_OPTIONS, room // MAX_OPTIONS)
    assert MAX_QUERY - MAX_OPTIONS < len(wire) <= MAX_QUERY
    parsed = parse_query(wire, UDP)
    assert isinstance(parsed, Query) and len(parsed.message.options) == MAX_OPTIONS


def test_the_token_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=4, burst=3), now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.125) is False  # half a token
    assert bucket.take(100.25) is True
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]  # burst, no more
    # TCP: a token owed is waited for, one after another
    assert [bucket.reserve(200.0) for _ in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert bucket.take(200.5) is False  # UDP waits until the debt is paid
    with pytest.raises(ValueError, match="expected rate > 0 and burst >= 1"):
        TokenBucket(RateLimit(rate=0), now=0.0)


def test_the_limit_log_says_it_at_most_every_ten_seconds() -> None:
    log = LimitLog()
    assert log.note(0.0, dropped=1) == "1 UDP queries dropped, 0 TCP queries delayed"
    assert log.note(1.0, dropped=1) is None and log.note(9.0, delayed=2) is None
    assert log.note(10.0, dropped=1) == "2 UDP queries dropped, 2 TCP queries delayed"


# -- the server ------------------------------------------------------------------------------------
SLOW = 0.3  # seconds the test's upstream takes to answer a name starting with "slow"


class _LateUpstream(asyncio.DatagramProtocol):
    """Answers every A query with 192.0.2.1, `SLOW` seconds late for names starting "slow"."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        rrset = dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1")
        response.answer.append(rrset)
        delay = SLOW if query.question[0].name.labels[0].startswith(b"slow") else 0.0
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self.transport.sendto, response.to_wire(), addr)


@asynccontextmanager
async def serving(
    snapshot: Snapshot,
    metrics: DnsMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
    maker: Callable[[int, int], socket.socket] = socket.socket,
    **kw: object,
) -> AsyncIterator[DnsServer]:
    loop = asyncio.get_running_loop()
    upstream, _ = await loop.create_datagram_endpoint(_LateUpstream, local_addr=("127.0.0.1", 0))
    port = upstream.get_extra_info("sockname")[1]
    settings = ServerSettings(port=0, **kw)  # type: ignore[arg-type]
    server = DnsServer(lambda: snapshot, [parse_upstream(f"127.0.0.1:{port}")], maker, metrics,
                       clock, client_uid=CLIENT, settings=settings)  # fmt: skip
    await server.start()  # port 0: the server finds a port free for both UDP and TCP
    try:
        yield server
    finally:
        await server.close()
        upstream.close()


def framed(*messages: dns.message.Message | bytes) -> bytes:
    wires = [m if isinstance(m, bytes) else m.to_wire() for m in messages]
    return b"".join(struct.pack("!H", len(w)) + w for w in wires)


async def read_answer(reader: asyncio.StreamReader) -> dns.message.Message:
    (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
    return dns.message.from_wire(await reader.readexactly(size))


async def until(count: Callable[[], float], want: float = 2) -> None:
    for _ in range(300):
        if count() >= want:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"waited 3 s for {want}, got {count()}")


def query(name: str) -> dns.message.Message:
    return dns.message.make_query(name, "A")


def test_oversized_queries_get_formerr_over_udp_and_tcp_and_are_counted(
    snapshot: Snapshot,
) -> None:
    registry = Registry()

    async def go() -> None:
        async with serving(snapshot, DnsMetrics(registry)) as server:
            assert server.udp_address is not None and server.tcp_address is not None
            loop = asyncio.get_running_loop()
            big = header(ar=1) + QUESTION + opt(1, MAX_QUERY)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_connect(s, server.udp_address)
                for wire in (big, query("reviews.").to_wire()):
                    await loop.sock_sendall(s, wire)
                    reply = await asyncio.wait_for(loop.sock_recv(s, 4096), 3)
                    assert reply[:2] == wire[:2]
                assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
            reader, writer = await asyncio.open_connection(*server.tcp_address)
            writer.write(framed(HUGE, query("reviews.")))
            formerr, served = await read_answer(reader), await read_answer(reader)
            assert (formerr.id, formerr.rcode()) == (0x4242, dns.rcode.FORMERR)
            assert addresses(served) == {"10.96.0.20"}
            writer.close()

    asyncio.run(go())
    assert registry.value("zt_dns_requests_total", type="none", result="too_large") == 2


def test_a_pod_past_its_budget_loses_udp_queries_and_waits_on_tcp(
    snapshot: Snapshot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zt.dns")
    registry = Registry()
    now = [0.0]

    async def go() -> float:
        limit = RateLimit(rate=20, burst=3)
        async with serving(snapshot, DnsMetrics(registry), lambda: now[0],
                           rate_limit=limit) as server:  # fmt: skip
            assert server.udp_address is not None and server.tcp_address is not None
            loop = asyncio.get_running_loop()
            queries = [query("reviews.") for _ in range(6)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_connect(s, server.udp_address)
                for q in queries[:5]:
                    await loop.sock_sendall(s, q.to_wire())
                await until(lambda: registry.value("zt_dns_rate_limited_total", transport="udp"))
                now[0] += 0.05  # one more token
                await loop.sock_sendall(s, queries[5].to_wire())
                ids = []
                for _ in range(4):
                    reply = await asyncio.wait_for(loop.sock_recv(s, 512), 3)
                    ids.append(dns.message.from_wire(reply).id)
            assert ids == [q.id for i, q in enumerate(queries) if i not in (3, 4)]
            # the bucket is empty: TCP queries are delayed (1/20 s each), none refused
            now[0] += 10.0  # a full bucket again: 3 at once, then 2 owed
            reader, writer = await asyncio.open_connection(*server.tcp_address)
            started = time.monotonic()
            writer.write(framed(*queries[:5]))
            answers = [await read_answer(reader) for _ in range(5)]
            assert [a.id for a in answers] == [q.id for q in queries[:5]]
            assert all(addresses(a) == {"10.96.0.20"} for a in answers)
            writer.close()
            return time.monotonic() - started

    elapsed = asyncio.run(go())
    assert elapsed >= 0.05 + 0.1 - 0.01  # the 4th waited 1/20 s, the 5th 2/20 s
    value = registry.value
    assert value("zt_dns_rate_limited_total", transport="udp") == 2
    assert value("zt_dns_requests_total", type="none", result="rate_limited") == 2
    assert value("zt_dns_rate_limited_total", transport="tcp") == 2
    assert value("zt_dns_requests_total", type="A", result="mesh") == 4 + 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"dns proxy for {CLIENT} over its rate limit (20 queries/s, burst 3): 1 UDP queries "
        "dropped, 0 TCP queries delayed in the last 10 s",
        f"dns proxy for {CLIENT} over its rate limit (20 queries/s, burst 3): 1 UDP queries "
        "dropped, 1 TCP queries delayed in the last 10 s",  # the second one: 10 s later
    ]


def test_pipelined_tcp_queries_are_answered_as_ready_at_most_the_cap_at_once(
    snapshot: Snapshot,
) -> None:
    """RFC 7766 §6.2.1.1: a slow forward does not hold up the queries behind it; past
    `tcp_pipeline` (2 here) in flight, the connection is not read until one is answered."""

    async def go() -> None:
        async with serving(snapshot, tcp_pipeline=2) as server:
            assert server.tcp_address is not None

            async def ask(*names: str) -> list[tuple[str, float]]:
                """(name, seconds) of each answer, in the order they came."""
                assert server.tcp_address is not None
                reader, writer = await asyncio.open_connection(*server.tcp_address)
                started = time.monotonic()
                writer.write(framed(*(query(n) for n in names)))
                answers = []
                for _ in names:
                    name = (await read_answer(reader)).question[0].name.to_text()
                    answers.append((name, time.monotonic() - started))
                writer.close()
                return answers

            free, capped = await asyncio.gather(
                ask("slow.example.", "fast.example.", "reviews."),
                ask("slow1.example.", "slow2.example.", "reviews."),
            )
            # the others were answered while the slow one waited upstream
            assert [name for name, _ in free][-1] == "slow.example."
            assert {name for name, _ in free} == {"slow.example.", "fast.example.", "reviews."}
            # two slow ones in flight: the third query is read once one of them is answered
            assert dict(capped)["reviews."] >= SLOW * 0.9

    asyncio.run(go())


def test_a_tcp_client_that_never_reads_is_cut_off_and_frees_its_slot(snapshot: Snapshot) -> None:
    def small_buffers(family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind)
        if kind == socket.SOCK_STREAM:  # accepted connections inherit it: they fill up fast
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    async def go() -> float:
        async with serving(snapshot, maker=small_buffers, rate_limit=None, max_tcp_connections=1,
                           tcp_write_timeout=0.3) as server:  # fmt: skip
            assert server.tcp_address is not None
            loop = asyncio.get_running_loop()
            hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hog.setblocking(False)
            try:
                await loop.sock_connect(hog, server.tcp_address)
                started, refused = time.monotonic(), 0
                # ~170 KB of answers: more than the buffers hold (~90 KB), so the server stalls
                send = asyncio.ensure_future(
                    loop.sock_sendall(hog, framed(*[query("reviews.")] * 4000))
                )
                while time.monotonic() - started < 5:
                    reader, writer = await asyncio.open_connection(*server.tcp_address)
                    writer.write(framed(query("reviews.")))
                    try:
                        answer = await read_answer(reader)
                        break
                    except (asyncio.IncompleteReadError, ConnectionResetError):
                        await asyncio.sleep(0.05)  # closed at once: the hog holds the one slot
                        refused += 1
                    finally:
                        writer.close()
                else:
                    pytest.fail("the slot was never freed")
                assert addresses(answer) == {"10.96.0.20"} and refused > 0
                with contextlib.suppress(ConnectionResetError):  # aborted: answers dropped
                    while await asyncio.wait_for(loop.sock_recv(hog, 65536), 3):
                        pass
                return time.monotonic() - started
            finally:
                send.cancel()
                await asyncio.gather(send, return_exceptions=True)
                hog.close()

    assert 0.3 <= asyncio.run(go()) < 3
