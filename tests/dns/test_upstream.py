"""The UDP path to upstreams, seen from an upstream this test plays on loopback (a socket it reads
and answers by hand, so it can hold an answer back): queries go out through a few pooled sockets,
each replaced after its share of queries, and identical questions in flight are asked once."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.dns.conftest import CLIENT, addresses
from zt.dns.server import DnsServer, ServerSettings
from zt.dns.upstream import parse_upstream
from zt.state.snapshot import Snapshot


class HandUpstream:
    """A UDP socket on 127.0.0.1 that zt forwards to; the test reads and answers each query."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    async def receive(self, timeout: float = 3.0) -> tuple[dns.message.Message, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            data, source = await loop.sock_recvfrom(self.sock, 65535)
        return dns.message.from_wire(data), source

    async def answer(self, query: dns.message.Message, source: tuple[str, int]) -> None:
        reply = dns.message.make_response(query)
        name = query.question[0].name
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.7"))
        await asyncio.get_running_loop().sock_sendto(self.sock, reply.to_wire(), source)


@asynccontextmanager
async def serving(
    snapshot: Snapshot, settings: ServerSettings | None = None
) -> AsyncIterator[tuple[DnsServer, HandUpstream]]:
    upstream = HandUpstream()
    server = DnsServer(
        lambda: snapshot,
        [parse_upstream(f"127.0.0.1:{upstream.port}")],
        socket.socket,
        client_uid=CLIENT,
        settings=settings or ServerSettings(port=0),
    )
    try:
        await server.start()
        yield server, upstream
    finally:
        await server.close()
        upstream.sock.close()


async def ask(server: DnsServer, name: str) -> dns.message.Message:
    assert server.udp_address is not None
    host, port = server.udp_address
    query = dns.message.make_query(name, "A")
    reply = await dns.asyncquery.udp(query, host, port=port, timeout=3)
    assert reply.id == query.id
    return reply


def test_identical_questions_in_flight_are_asked_once(snapshot: Snapshot) -> None:
    async def go() -> None:
        async with serving(snapshot) as (server, upstream):
            clients = [asyncio.ensure_future(ask(server, "same.example.org.")) for _ in range(5)]
            query, source = await upstream.receive()
            with pytest.raises(TimeoutError):  # the other four wait for that one exchange
                await upstream.receive(timeout=0.3)
            await upstream.answer(query, source)
            for reply in await asyncio.gather(*clients):  # each under its own id
                assert addresses(reply) == {"192.0.2.7"}

    asyncio.run(go())


def test_upstream_sockets_are_pooled_and_replaced_after_their_share(snapshot: Snapshot) -> None:
    sockets, uses = 2, 8
    names = 5 * sockets * uses
    settings = ServerSettings(port=0, upstream_sockets=sockets, upstream_socket_uses=uses)
    ports: Counter[int] = Counter()

    async def upstream_side(upstream: HandUpstream) -> None:
        for _ in range(names):
            query, source = await upstream.receive()
            ports[source[1]] += 1
            await upstream.answer(query, source)

    async def go() -> None:
        async with serving(snapshot, settings) as (server, upstream):
            answering = asyncio.ensure_future(upstream_side(upstream))
            for i in range(names):
                assert addresses(await ask(server, f"n{i}.example.org.")) == {"192.0.2.7"}
            await answering

    asyncio.run(go())
    # a few sockets, not one per query; none carried more than its share (fresh random ports)
    assert names // uses <= len(ports) <= names // uses + sockets
    assert max(ports.values()) <= uses


def test_formerr_to_our_opt_is_asked_again_without_edns(snapshot: Snapshot) -> None:
    """RFC 6891 §7: a server that does not speak EDNS answers FORMERR; ask it once more plain."""

    async def go() -> None:
        async with serving(snapshot) as (server, upstream):
            client = asyncio.ensure_future(ask(server, "old.example.org."))
            query, source = await upstream.receive()
            assert query.edns == 0
            refusal = dns.message.make_response(query)
            refusal.set_rcode(dns.rcode.FORMERR)
            refusal.use_edns(False)
            await asyncio.get_running_loop().sock_sendto(upstream.sock, refusal.to_wire(), source)
            again, source = await upstream.receive()
            assert (again.edns, again.question) == (-1, query.question)
            await upstream.answer(again, source)
            assert addresses(await client) == {"192.0.2.7"}

    asyncio.run(go())
