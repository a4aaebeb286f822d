"""Random bytes and random HTTP/2 frame sequences into a lab node's :15008 (over mTLS with a valid
client certificate, and raw without TLS) and :15006 (plaintext inbound), from another node's pod.

Seeded `random`, bounded count, a few workers in parallel. Each test asserts that the daemon logged
no exception ("Traceback" / "Exception") and that it still serves a legitimate tunnel afterwards.
Set ZT_FUZZ_SEED to replay other inputs; a failure names the seed."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from tests.abuse.attacks import PREFACE, Peer, connect_block, frame, probe, tcp_connect, tls_context
from tests.abuse.targets import NodeTarget, node_target
from tests.node.lab import running_lab
from zt.lab import logs, mesh, runner

pytestmark = pytest.mark.root

SEED = int(os.environ.get("ZT_FUZZ_SEED", "20261206"))
WORKERS = 6
READ_WAIT = 0.05  # what the server answers is read (and dropped) for this long, then we close
FRAME_TYPES = (*range(10), 0x0A, 0x10, 0xFF)  # RFC 9113 §6 types, ALTSVC, unknown ones
BAD_WORDS = ("Traceback", "Exception")
MISSED: collections.Counter[str] = collections.Counter()  # why connections were not made
Sender = Callable[[socket.socket, random.Random], None]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeTarget]:
    with (
        running_lab("fz") as lab,
        node_target(lab, tmp_path_factory.mktemp("fuzz-node")) as target,
    ):
        yield target


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 9, 24, rng.randrange(4096))))


def random_frame(rng: random.Random, peer: Peer) -> bytes:
    """One frame: a random header over a random payload, sometimes a lying length, sometimes a
    valid CONNECT header block (so streams get opened and then abused)."""
    kind = rng.choice(FRAME_TYPES)
    stream = rng.choice((0, 1, 2, 3, 5, 2**31 - 1, rng.randrange(2**31)))
    if kind == 0x1 and rng.random() < 0.5:
        payload = connect_block(rng.choice((peer.echo, peer.blackhole)))
    else:
        payload = rng.randbytes(rng.choice((0, 4, 5, 6, 8, 13, rng.randrange(512))))
    length = rng.randrange(2**24) if rng.random() < 0.05 else None
    return frame(kind, rng.randrange(256), stream, payload, length=length)


def wellformed_frame(rng: random.Random, peer: Peer) -> bytes:
    """A frame whose layout is right (so it gets past parsing) with random fields: the states
    behind the parser (flow control, stream states, settings, GOAWAY) are what this reaches."""
    stream = rng.choice((1, 1, 1, 3, 5))
    pick = rng.randrange(10)
    if pick == 0:
        return frame(0x1, 0x4 | rng.choice((0, 1)), stream, connect_block(peer.echo))
    if pick <= 2:
        return frame(0x0, rng.choice((0, 1)), stream, rng.randbytes(rng.randrange(64)))
    if pick == 3:
        return frame(0x8, 0, rng.choice((0, stream)), struct.pack(">I", rng.randrange(2**32)))
    if pick == 4:
        return frame(0x3, 0, stream, struct.pack(">I", rng.randrange(16)))
    if pick == 5:
        ident, value = rng.randrange(1, 10), rng.choice((0, 1, 2**14, 2**24, 2**31, 2**32 - 1))
        return frame(0x4, rng.choice((0, 0, 1)), 0, struct.pack(">HI", ident, value))
    if pick == 6:
        return frame(0x6, rng.choice((0, 1)), 0, rng.randbytes(8))
    if pick == 7:
        return frame(0x2, 0, stream, struct.pack(">IB", rng.randrange(2**32), rng.randrange(256)))
    if pick == 8:
        return frame(0x7, 0, 0, struct.pack(">II", rng.randrange(2**31), rng.randrange(16)))
    return frame(0x9, rng.choice((0, 4)), stream, rng.randbytes(rng.randrange(32)))


def frame_sequence(rng: random.Random, peer: Peer) -> bytes:
    """Mostly the preface and a SETTINGS frame first (to get past them), then either well-formed
    frames with random fields or random frames."""
    head = PREFACE + frame(0x4, 0, 0, b"") if rng.random() < 0.85 else b""
    make = wellformed_frame if rng.random() < 0.5 else random_frame
    return head + b"".join(make(rng, peer) for _ in range(rng.randrange(1, 40)))


def _drain(sock: socket.socket) -> None:
    end = time.monotonic() + READ_WAIT
    with contextlib.suppress(OSError, ValueError):
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(1 << 16):
                return


def _one(peer: Peer, tls: bool, payload: bytes, rst: bool) -> bool:
    """One connection: (TLS,) the payload in a few writes, a short read, then FIN or RST.
    True when the connection (and handshake) was made: the input reached the server."""
    reached = False
    try:
        raw = tcp_connect(peer, 5.0)
    except ConnectionResetError:
        # zt accepted and reset it before connect() read SO_ERROR (a DENY, the loop guard): the
        # connection reached the server, which refused it at once (measured: 0-15 of 120 here)
        return True
    except (OSError, ValueError) as exc:
        MISSED[type(exc).__name__] += 1
        return False
    with contextlib.suppress(OSError, ValueError):
        sock: socket.socket = raw
        try:
            if tls:
                sock = tls_context(peer).wrap_socket(raw, server_hostname=None)
            reached = True
            cuts = sorted({0, len(payload), *random.Random(len(payload)).sample(range(64), 2)})
            for a, b in itertools.pairwise(cuts):
                sock.sendall(payload[a:b])
            _drain(sock)
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()
            raw.close()
    return reached


def fuzz(
    target: NodeTarget,
    peer: Peer,
    *,
    tls: bool,
    make: Callable[[random.Random], bytes],
    n: int,
    min_reached: float = 0.8,
) -> None:
    """`n` connections with inputs from `make`, then the two assertions. At least `min_reached`
    of the connections must have been made (else the inputs never reached the server)."""
    log = target.lab.log(target.node)
    offset = logs.size(log)
    rng = random.Random(f"{SEED}:{peer.server}:{tls}:{make.__name__}")
    cases = [(make(rng), rng.random() < 0.3) for _ in range(n)]
    with ThreadPoolExecutor(WORKERS) as pool:
        reached = sum(pool.map(lambda case: _one(peer, tls, *case), cases, timeout=60))
    time.sleep(0.3)  # let the daemon finish with the last connections before reading its log
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    bad = [i for i, line in enumerate(lines) if any(word in line for word in BAD_WORDS)]
    assert target.alive(), f"seed {SEED}: the daemon died:\n{runner.tail(log, 30)}"
    # a server may refuse some connections (e.g. per-source caps), not most of them
    assert reached >= min_reached * n, (
        f"seed {SEED}: only {reached} of {n} connections were made; connect errors: {MISSED}"
    )
    assert not bad, f"seed {SEED}: {len(bad)} lines like this one:\n" + "\n".join(
        lines[max(0, bad[0] - 2) : bad[0] + 30]
    )
    legit = probe(target.prober)
    assert legit.status == 200 and legit.echoed == b"legit tunnel\n", f"seed {SEED}: {legit}"


def test_random_bytes_into_15008_over_tls(node: NodeTarget) -> None:
    fuzz(node, node.attacker, tls=True, make=random_bytes, n=150)


def test_random_frame_sequences_into_15008_over_tls(node: NodeTarget) -> None:
    peer = node.attacker

    def frames(rng: random.Random) -> bytes:
        return frame_sequence(rng, peer)

    fuzz(node, peer, tls=True, make=frames, n=600)


def test_random_bytes_and_frames_into_15008_without_tls(node: NodeTarget) -> None:
    peer = node.attacker

    def either(rng: random.Random) -> bytes:
        return frame_sequence(rng, peer) if rng.random() < 0.5 else random_bytes(rng)

    fuzz(node, peer, tls=False, make=either, n=150)


@pytest.mark.parametrize("port", [mesh.APP_PORT, mesh.DENIED_PORT, 15006])
def test_random_bytes_into_15006(node: NodeTarget, port: int) -> None:
    """Plaintext inbound: to the app's port (allowed), to the port a DENY policy refuses, and to
    15006 itself (the loop guard's case); every one reaches the node's :15006 listener."""
    peer = replace(node.attacker, server=(node.attacker.server[0], port))
    peer2 = node.attacker

    def either(rng: random.Random) -> bytes:
        return frame_sequence(rng, peer2) if rng.random() < 0.3 else random_bytes(rng)

    if port == 15006:  # the loop guard may reset these at once: reaching the server is optional
        fuzz(node, peer, tls=False, make=either, n=20, min_reached=0.0)
    else:
        fuzz(node, peer, tls=False, make=either, n=120)
