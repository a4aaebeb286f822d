"""Upstream resolvers: where they are (resolv.conf or a list) and the asyncio client asking them.

Each upstream is asked in turn over UDP (a few pooled sockets, `UpstreamClient`); a truncated
answer is asked again over TCP (RFC 7766 §5: "a stub resolver ... MUST use TCP when it receives a
truncated response"). An upstream answering FORMERR or NOTIMP to the query (which carries zt's
OPT) is asked once more without it (RFC 6891 §7). An upstream that times out, cannot be reached,
or answers SERVFAIL, REFUSED, NOTIMP or FORMERR is skipped for the next; when none answers, the
caller gets None (and answers SERVFAIL).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.rcode

from zt.addr import IpAddress, SocketAddr, parse_ip
from zt.dns.core import Forward
from zt.dns.errors import UpstreamConfigError, UpstreamError
from zt.dns.metrics import DnsMetrics
from zt.dns.raw import TC, Answer
from zt.errors import AddressError
from zt.sockopt import make_socket

SocketMaker = Callable[[int, int], socket.socket]  # (family, type) -> a new socket
RESOLV_CONF = Path("/etc/resolv.conf")
DNS_PORT = 53
UDP_TIMEOUT = 2.0  # per upstream; glibc's default is 5 s per try, and clients retry on their own
TCP_TIMEOUT = 5.0
POOL_SOCKETS = 8  # open UDP sockets per upstream
SOCKET_USES = 64  # queries one of them carries before a new socket (a new random port) replaces it
LENGTH = struct.Struct("!H")  # RFC 7766 §8: the two-byte length before each TCP message
# rcodes that say "this upstream cannot answer", not "the name is so": try the next one
UNUSABLE = frozenset({dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.FORMERR})
# RFC 6891 §7: "Responders that do not understand ... EDNS ... are expected to ... return
# FORMERR"; "A requester MAY then retry without EDNS" (NOTIMP: servers that reject the OPT so)
NO_EDNS = frozenset({dns.rcode.FORMERR, dns.rcode.NOTIMP})


@dataclass(frozen=True)
class Upstream:
    ip: IpAddress
    port: int = DNS_PORT

    @property
    def family(self) -> int:
        return socket.AF_INET if self.ip.version == 4 else socket.AF_INET6

    @property
    def address(self) -> tuple[str, int]:
        return (str(self.ip), self.port)

    def __str__(self) -> str:
        host = str(self.ip) if self.ip.version == 4 else f"[{self.ip}]"
        return f"{host}:{self.port}"


def parse_upstream(text: str) -> Upstream:
    """`10.96.0.10`, `10.96.0.10:5353`, `fd00::a`, `[fd00::a]:5353` (the `--dns-upstream` form):
    an address alone (zt.addr `parse_ip`) or with a port (`SocketAddr.parse`)."""
    try:
        if text.startswith("[") and text.endswith("]") and ":" in text:  # `[fd00::a]`, port 53
            return Upstream(parse_ip(text[1:-1]))
        if text.startswith("[") or text.count(":") == 1:
            addr = SocketAddr.parse(text)
            return Upstream(addr.ip, addr.port)
        return Upstream(parse_ip(text))
    except AddressError:
        raise UpstreamConfigError(
            f"DNS upstream: got {text!r}, expected an IP address with an optional port "
            "(10.96.0.10, 10.96.0.10:5353, [fd00::a]:53)"
        ) from None


def parse_resolv_conf(text: str) -> tuple[Upstream, ...]:
    """The `nameserver` lines of a resolv.conf (resolv.conf(5)); scoped IPv6 (`fe80::1%eth0`)
    and malformed lines are skipped, as glibc skips them."""
    out: list[Upstream] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                out.append(Upstream(ipaddress.ip_address(words[1])))
            except ValueError:
                continue
    return tuple(out)


def system_upstreams(path: Path = RESOLV_CONF) -> tuple[Upstream, ...]:
    """The node's resolvers. resolv.conf(5): "If no nameserver entries are present, the default
    is to use the name server on the local machine"."""
    try:
        found = parse_resolv_conf(path.read_text())
    except OSError as exc:
        raise UpstreamConfigError(f"DNS upstreams: cannot read {path}: {exc.strerror}") from None
    return found or (Upstream(ipaddress.ip_address("127.0.0.1")),)


class _Channel:
    """One connected UDP socket to one upstream, shared by the queries in flight on it (told
    apart by id) and replaced after `SOCKET_USES` queries. Connected: the kernel drops datagrams
    from any other source (RFC 5452 §9.1)."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, uses: int) -> None:
        self.sock = sock
        self.loop = loop
        self.max_uses = uses
        self.waiting: dict[int, tuple[Forward, asyncio.Future[Answer]]] = {}
        self.uses = 0
        self.retired = False
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):  # bounded per wakeup; the loop comes back while more are queued
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP unreachable on a connected socket: every query here
                self._fail(exc)
                return
            entry = self.waiting.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
            if entry is None:
                continue  # late, or not an answer to anything asked: ignored
            forward, future = entry
            answer = forward.accept(data)
            if answer is not None and not future.done():
                future.set_result(answer)

    def _fail(self, exc: OSError) -> None:
        for _, future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.retire()

    def ask(self, forward: Forward) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = self.loop.create_future()
        self.waiting[forward.qid] = (forward, future)
        self.uses += 1
        if self.uses >= self.max_uses:
            self.retired = True  # this query is its last: closed once answered (`release`)
        try:
            self.sock.send(forward.wire)
        except OSError as exc:
            future.set_exception(exc)
        return future

    def release(self, qid: int) -> None:
        self.waiting.pop(qid, None)
        if self.retired and not self.waiting:
            self.close()

    def retire(self) -> None:
        self.retired = True
        if not self.waiting:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class UpstreamClient:
    """Asks upstreams for a `Forward`. Sockets come from `socket_maker` (the node's namespace
    by default: the node's resolv.conf names servers reachable from there).

    UDP goes through a few open sockets per upstream (as dnsmasq's pool of random ports), not a
    new one per query (~50 us each): a query takes one of `pool` slots at random, and a socket
    is replaced after `socket_uses` queries, so source ports stay unpredictable (RFC 5452 §9.2:
    "use an unpredictable source port", the kernel's random ephemeral port of a new socket)."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        socket_maker: SocketMaker = make_socket,  # keepalive on TCP (zt/sockopt.py)
        metrics: DnsMetrics | None = None,
        *,
        udp_timeout: float = UDP_TIMEOUT,
        tcp_timeout: float = TCP_TIMEOUT,
        pool: int = POOL_SOCKETS,
        socket_uses: int = SOCKET_USES,
    ) -> None:
        if not upstreams:
            raise UpstreamConfigError("DNS upstreams: got none, expected at least one")
        self.upstreams = tuple(upstreams)
        self._make = socket_maker
        self._metrics = metrics
        self.udp_timeout = udp_timeout
        self.tcp_timeout = tcp_timeout
        self._pool = pool
        self._socket_uses = socket_uses
        self._slots: dict[Upstream, list[_Channel | None]] = {}
        self._rng = random.SystemRandom()

    def close(self) -> None:
        """Close every pooled socket (queries still waiting on them fail)."""
        for slots in self._slots.values():
            for channel in slots:
                if channel is not None:
                    channel._fail(ConnectionAbortedError(0, "closed"))
                    channel.close()
        self._slots.clear()

    async def resolve(self, forward: Forward) -> Answer | None:
        for upstream in self.upstreams:
            try:
                answer = await self._ask(upstream, forward)
            except UpstreamError as exc:
                if self._metrics is not None:
                    self._metrics.upstream_failed(exc.why.split(":")[0])
                continue
            return answer
        return None

    async def _ask(self, upstream: Upstream, forward: Forward) -> Answer:
        answer = await self._exchange(upstream, forward)
        if answer.scanned.rcode in NO_EDNS:
            plain = forward.without_edns()
            if plain is not forward:
                answer = await self._exchange(upstream, plain)
        rcode = answer.scanned.rcode
        if rcode in UNUSABLE:
            raise UpstreamError(
                str(upstream), f"rcode: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}"
            )
        return answer

    async def _exchange(self, upstream: Upstream, forward: Forward) -> Answer:
        """UDP, then TCP if the answer came truncated."""
        answer = await self._udp(upstream, forward)
        if answer.scanned.flags & TC:
            answer = await self._tcp(upstream, forward)
        return answer

    def _counted(self, transport: str) -> None:
        if self._metrics is not None:
            self._metrics.sent_upstream(transport)

    def _channel(self, upstream: Upstream, qid: int) -> _Channel:
        """A pooled socket for a query with id `qid` (none already waiting with that id)."""
        slots = self._slots.setdefault(upstream, [None] * self._pool)
        i = self._rng.randrange(len(slots))
        channel = slots[i]
        if channel is None or channel.retired or qid in channel.waiting:
            if channel is not None:
                channel.retire()
            channel = slots[i] = self._open(upstream)
        return channel

    def _open(self, upstream: Upstream) -> _Channel:
        try:
            sock = self._make(upstream.family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise UpstreamError(str(upstream), f"socket: {exc.strerror}") from None
        try:
            sock.setblocking(False)
            sock.connect(upstream.address)  # a UDP connect does not block
            return _Channel(sock, asyncio.get_running_loop(), self._socket_uses)
        except OSError as exc:
            sock.close()
            raise UpstreamError(str(upstream), f"error: udp {exc.strerror}") from None

    async def _udp(self, upstream: Upstream, forward: Forward) -> Answer:
        channel = self._channel(upstream, forward.qid)
        self._counted("udp")
        try:
            async with asyncio.timeout(self.udp_timeout):
                return await channel.ask(forward)
        except TimeoutError:
            raise UpstreamError(str(upstream), "timeout: udp") from None
        except OSError as exc:
            raise UpstreamError(str(upstream), f"error: udp {exc.strerror}") from None
        finally:
            channel.release(forward.qid)

    async def _tcp(self, upstream: Upstream, forward: Forward) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            sock = self._make(upstream.family, socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamError(str(upstream), f"socket: {exc.strerror}") from None
        with sock:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.tcp_timeout):
                    await loop.sock_connect(sock, upstream.address)
                    self._counted("tcp")
                    await loop.sock_sendall(sock, LENGTH.pack(len(forward.wire)) + forward.wire)
                    (size,) = LENGTH.unpack(await _read_exactly(loop, sock, LENGTH.size))
                    answer = forward.accept(await _read_exactly(loop, sock, size))
            except TimeoutError:
                raise UpstreamError(str(upstream), "timeout: tcp") from None
            except OSError as exc:
                raise UpstreamError(str(upstream), f"error: tcp {exc.strerror}") from None
        if answer is None:
            raise UpstreamError(str(upstream), "mismatch: tcp answer to another query")
        return answer


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionResetError(0, "closed before a whole message")
        data += chunk
    return bytes(data)
