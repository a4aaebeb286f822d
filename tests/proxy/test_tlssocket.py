"""TLS on the socket (zt/proxy/tlssocket.py): the transport's semantics on both loops, and the
handshake rules of dial/serve_tls on that path."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable

import pytest

from tests.proxy.helpers import LOOPBACK, LOOPS, Pki, run, zt_server
from zt.addr import SocketAddr
from zt.identity.errors import PeerIdentityMismatch
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy import _openssl, ktls, tlssocket
from zt.proxy.accept import (
    AcceptLimits,
    AcceptLoop,
    ConnectionGroup,
    listening_socket,
    serve_tls,
)
from zt.proxy.client import dial
from zt.proxy.tls import server_peer_check


class Peer(asyncio.Protocol):
    """Records what the transport delivers; pauses its reading for a moment every `pause_every`
    bytes (flow control on the receiving side)."""

    def __init__(self, pause_every: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: tlssocket.TlsSocketTransport | None = None
        self.received = hashlib.sha256()
        self.count = 0
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = self.loop.create_future()
        self.pauses = 0
        self.resumes = 0
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_pauses = 0
        self._pause_every = pause_every
        self._next_pause = pause_every

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, tlssocket.TlsSocketTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.update(data)
        self.count += len(data)
        if self._pause_every and self.count >= self._next_pause and self.transport is not None:
            self._next_pause += self._pause_every
            self.reading_pauses += 1
            self.transport.pause_reading()
            self.loop.call_later(0.005, self.transport.resume_reading)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.pauses += 1
        self.writable.clear()

    def resume_writing(self) -> None:
        self.resumes += 1
        self.writable.set()


async def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        accepted = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await accepted
    return client, server


async def _tls_pair(
    pki: Pki, client: Callable[[], Peer], server: Callable[[], Peer]
) -> tuple[tuple[tlssocket.TlsSocketTransport, Peer], tuple[tlssocket.TlsSocketTransport, Peer]]:
    csock, ssock = await _tcp_pair()
    ends = await asyncio.gather(
        tlssocket.connect(client_context(pki.client), csock, client, server_side=False),
        tlssocket.connect(server_context(pki.server), ssock, server, server_side=True),
    )
    return ends[0], ends[1]


def _key_update(transport: asyncio.Transport) -> None:
    """TLS 1.3 KeyUpdate with update_requested (RFC 8446 §4.6.3): our next record carries it and
    the peer must answer with its own, from inside its reads."""
    tls = transport.get_extra_info("ssl_object")
    lib = _openssl._lib()
    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    assert lib.SSL_key_update(_openssl._ssl_pointer(tls, lib), 1) == 1  # SSL_KEY_UPDATE_REQUESTED


async def _send(transport: asyncio.Transport, peer: Peer, data: bytes, chunk: int) -> None:
    view = memoryview(data)
    for at in range(0, len(data), chunk):
        if at == len(data) // 2:
            for _ in range(1000):  # OpenSSL refuses a KeyUpdate while a write is unfinished
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.001)
            _key_update(transport)  # new keys both ways in the middle of the bulk
        await peer.writable.wait()
        # writelines: the driver's way (a frame header and its payload by reference)
        transport.writelines([view[at : at + 9], view[at + 9 : at + chunk]])


@pytest.mark.parametrize("loop", LOOPS)
def test_bulk_both_ways_is_byte_exact_with_pauses_and_key_updates(pki: Pki, loop: str) -> None:
    size = 8 << 20
    up, down = os.urandom(size), os.urandom(size)

    async def body() -> None:
        (ct, cp), (st, sp) = await _tls_pair(pki, lambda: Peer(1 << 20), lambda: Peer(1 << 20))
        for transport in (ct, st):
            transport.set_write_buffer_limits(high=256 * 1024)
        await asyncio.gather(_send(ct, cp, up, 64 * 1024), _send(st, sp, down, 1 << 20))
        while sp.count < size or cp.count < size:
            await asyncio.sleep(0.01)
        assert sp.received.digest() == hashlib.sha256(up).digest()
        assert cp.received.digest() == hashlib.sha256(down).digest()
        # both writers were held back by the 256 KiB mark, and let go as often
        assert cp.pauses >= 1 and sp.pauses >= 1
        assert (cp.pauses, sp.pauses) == (cp.resumes, sp.resumes)
        assert cp.reading_pauses >= 4 and sp.reading_pauses >= 4
        ct.close()
        assert await asyncio.wait_for(sp.lost, 5) is None  # close_notify + FIN: a clean end
        assert sp.eof
        assert await asyncio.wait_for(cp.lost, 5) is None

    run(body(), loop=loop)


def _blocking_server(pki: Pki, sock: socket.socket, out: dict[str, object]) -> None:
    """A plain blocking OpenSSL server that tells a clean close_notify (recv returns b"") from a
    bare FIN or a reset (suppress_ragged_eofs=False raises)."""
    sock.setblocking(True)
    got = bytearray()
    try:
        with server_context(pki.server).wrap_socket(
            sock, server_side=True, suppress_ragged_eofs=False
        ) as tls:
            while data := tls.recv(1 << 16):
                got += data
            out["end"] = "close_notify"
    except (ssl.SSLError, OSError) as exc:
        out["end"] = type(exc).__name__
    out["data"] = bytes(got)


@pytest.mark.parametrize("loop", LOOPS)
def test_close_flushes_then_sends_close_notify(pki: Pki, loop: str) -> None:
    payload = os.urandom(3 << 20)
    out: dict[str, object] = {}

    async def body() -> None:
        csock, ssock = await _tcp_pair()
        thread = threading.Thread(target=_blocking_server, args=(pki, ssock, out))
        thread.start()
        ct, cp = await tlssocket.connect(client_context(pki.client), csock, Peer, server_side=False)
        ct.write(payload)  # more than the socket takes at once: close() must flush it first
        ct.close()
        assert ct.is_closing()
        ct.write(b"after close")  # ignored, as asyncio's transports do
        assert await asyncio.wait_for(cp.lost, 5) is None
        await asyncio.to_thread(thread.join, 5)

    run(body(), loop=loop)
    assert out["end"] == "close_notify"
    assert out["data"] == payload


def test_abort_ends_at_once_without_close_notify(pki: Pki) -> None:
    out: dict[str, object] = {}

    async def body() -> None:
        csock, ssock = await _tcp_pair()
        thread = threading.Thread(target=_blocking_server, args=(pki, ssock, out))
        thread.start()
        ct, cp = await tlssocket.connect(client_context(pki.client), csock, Peer, server_side=False)
        ct.write(b"partial")
        ct.abort()
        assert ct.is_closing()
        assert await asyncio.wait_for(cp.lost, 1) is None
        assert ct.get_extra_info("socket").fileno() == -1
        await asyncio.to_thread(thread.join, 5)

    run(body())
    assert out["end"] in {"SSLEOFError", "ConnectionResetError"}


def test_peer_check_refusal_on_the_socket_path(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (_server, addr):
            wrong = SpiffeId(pki.ca.trust_domain, "default", "someone-else")
            with pytest.raises(PeerIdentityMismatch):
                await dial(
                    addr,
                    client_context(pki.client),
                    peer_check=server_peer_check([wrong]),
                    tls_on_socket=True,
                )
            # and the right identity is served on the same listener
            driver = await dial(
                addr,
                client_context(pki.client),
                peer_check=server_peer_check([pki.server.identity]),
                tls_on_socket=True,
            )
            assert isinstance(driver.transport, tlssocket.TlsSocketTransport)
            assert driver.peer == pki.server.identity
            driver.close()

    run(body())


async def _ended(peer: Peer) -> None:
    await peer.lost


@pytest.mark.parametrize("loop", LOOPS)
def test_handshake_deadline_closes_a_stalled_client(pki: Pki, loop: str) -> None:
    limits = AcceptLimits(handshake_timeout=0.3)

    async def body() -> dict[str, int]:
        listener = listening_socket(LOOPBACK)
        port = listener.getsockname()[1]
        accept = AcceptLoop(
            listener,
            serve_tls(
                Peer,
                server_context(pki.server),
                ended=_ended,
                limits=limits,
                tls_on_socket=True,
            ),
            group=ConnectionGroup("test", limits),
            pre_auth=True,
        )
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the deadline
            writer.close()
            return dict(accept.metrics.counts)
        finally:
            accept.close()

    counts = run(body(), loop=loop)
    assert counts["handshake_timeout"] == 1


def test_ktls_option_on_a_kernel_without_it_still_works(pki: Pki) -> None:
    """SSL_OP_ENABLE_KTLS set per connection: OpenSSL tries the kernel, falls back, and the
    connection reports no offload (this machine's kernel has no CONFIG_TLS)."""

    async def body() -> tuple[bool, bool]:
        csock, ssock = await _tcp_pair()
        tls_c = tlssocket.wrap(client_context(pki.client), csock, server_side=False)
        tls_s = tlssocket.wrap(server_context(pki.server), ssock, server_side=True)
        for tls in (tls_c, tls_s):
            _openssl.set_options(tls, ktls.SSL_OP_ENABLE_KTLS)
        await asyncio.gather(tlssocket.handshake(tls_c), tlssocket.handshake(tls_s))
        client = tlssocket.TlsSocketTransport(asyncio.get_running_loop(), tls_c, Peer())
        server_peer = Peer()
        server = tlssocket.TlsSocketTransport(asyncio.get_running_loop(), tls_s, server_peer)
        client.start()
        server.start()
        client.write(b"x" * 100_000)
        while server_peer.count < 100_000:
            await asyncio.sleep(0.01)
        offload = ktls.connection_ktls(tls_c)
        if ktls.status().available:  # a kernel with the tls ULP: TLS 1.3 TX only (OpenSSL 3.0)
            assert offload[0]
        client.close()
        server.close()
        return offload

    offload = run(body())
    assert ktls.status().available or offload == (False, False)


def test_dial_without_a_listener_fails_as_before(pki: Pki) -> None:
    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(Exception, match="refused"):
            await dial(
                SocketAddr.parse(f"127.0.0.1:{port}"),
                client_context(pki.client),
                peer_check=server_peer_check([pki.server.identity]),
                tls_on_socket=True,
            )

    run(body())
