"""zt/proxy/zerocopy.py: the pipe that carries DATA payloads by splice(2), over real loopback TCP
sockets (the kTLS end of it runs in tests/ktls/test_splice_relay.py, on kernels with kTLS)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import pytest

from zt.errors import UsageError
from zt.proxy import ktls, zerocopy


@pytest.fixture
def tcp_pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """Two connected loopback TCP pairs: (app client, app server side, out side, out reader)."""
    made: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for _ in range(2):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            made += [client, server]
    for sock in made:
        sock.setblocking(False)
    yield made[0], made[1], made[2], made[3]
    for sock in made:
        sock.close()


def _read(sock: socket.socket, size: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(5)
    out = b""
    while len(out) < size:
        out += sock.recv(size - len(out))
    return out


def test_bytes_go_socket_to_pipe_to_socket_unchanged(
    tcp_pairs: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    app, app_peer, out, out_peer = tcp_pairs
    pipe = zerocopy.Pipe(lambda: None)
    payload = os.urandom(100_000)
    app.setblocking(True)
    app.sendall(payload)
    got = 0
    for _ in range(1000):
        if got == len(payload):
            break
        with contextlib.suppress(BlockingIOError):
            got += pipe.fill(app_peer.fileno(), min(pipe.room, len(payload) - got))
        while pipe.held:
            pipe.drain(out.fileno(), pipe.held)
    assert got == len(payload) and pipe.held == 0
    assert _read(out_peer, len(payload)) == payload
    app.shutdown(socket.SHUT_WR)
    for _ in range(1000):  # the FIN: splice returns 0
        try:
            assert pipe.fill(app_peer.fileno(), 1024) == 0
            break
        except BlockingIOError:
            continue
    pipe.release()
    with pytest.raises(OSError):
        os.fstat(pipe.read_fd)


def test_a_waiting_relay_is_told_when_the_pipe_drains(
    tcp_pairs: tuple[socket.socket, socket.socket, socket.socket, socket.socket],
) -> None:
    app, app_peer, out, _out_peer = tcp_pairs
    told: list[int] = []
    pipe = zerocopy.Pipe(lambda: told.append(pipe.held))
    app.setblocking(True)
    app.sendall(b"x" * 1000)
    for _ in range(1000):
        try:
            pipe.fill(app_peer.fileno(), 1000 - pipe.held)
        except BlockingIOError:
            continue
        if pipe.held == 1000:
            break
    pipe.waiting = True
    pipe.hold()  # a queued payload keeps the pipe open after the relay let go
    pipe.release()
    assert pipe.drain(out.fileno(), 1000) == 1000
    assert told == [0] and not pipe.waiting
    pipe.release()


def test_splice_needs_ktls() -> None:
    assert not ktls.wanted()
    with pytest.raises(UsageError, match="--splice: got on with kTLS off, expected --ktls on"):
        zerocopy.configure(True)
    assert not zerocopy.enabled()
