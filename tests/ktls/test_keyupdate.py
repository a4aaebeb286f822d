"""A peer's TLS 1.3 KeyUpdate with update_requested on a kTLS connection: the case that keeps
`--ktls auto` off (zt/proxy/ktls.py).

RFC 8446 §4.6.3: "If the request_update field is set to "update_requested", then the receiver MUST
send a KeyUpdate of its own [...] prior to sending its next Application Data record." With kTLS TX,
OpenSSL 3.0 sends that KeyUpdate through the kernel but re-keys only its user-space state: the
kernel keeps sealing with the old key and the peer must fail the connection. Without kTLS the same
exchange goes on. Both are asserted: the day this passes without a failure, auto can be on.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.proxy.helpers import Pki, run
from tests.proxy.test_tlssocket import Peer
from zt.identity.tls import client_context, server_context
from zt.proxy import _openssl, ktls, tlssocket


async def _pair(pki: Pki, *, offload: bool) -> tuple[tlssocket.TlsSocketTransport, Peer,
                                                       tlssocket.TlsSocketTransport, Peer]:  # fmt: skip
    """zt's side (client, kTLS TX when `offload`) and a peer without kTLS, both shaken hands."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        zt_sock = socket.create_connection(listener.getsockname(), timeout=5)
        peer_sock, _ = listener.accept()
    ktls.want(offload)
    zt_tls = tlssocket.wrap(client_context(pki.client), zt_sock, server_side=False)
    ktls.want(False)
    peer_tls = tlssocket.wrap(server_context(pki.server), peer_sock, server_side=True)
    await asyncio.gather(tlssocket.handshake(zt_tls), tlssocket.handshake(peer_tls))
    loop = asyncio.get_running_loop()
    zt_peer, other = Peer(), Peer()
    zt = tlssocket.TlsSocketTransport(loop, zt_tls, zt_peer)
    peer = tlssocket.TlsSocketTransport(loop, peer_tls, other)
    zt.start()
    peer.start()
    return zt, zt_peer, peer, other


async def _until(condition: object, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("offload", [True, False], ids=["ktls", "userspace"])
def test_peer_key_update_request(pki: Pki, ktls_kernel: None, offload: bool) -> None:
    async def body() -> tuple[int, Exception | None]:
        zt, zt_side, peer, peer_side = await _pair(pki, offload=offload)
        try:
            tx, rx = ktls.connection_ktls(zt.get_extra_info("socket"))
            assert (tx, rx) == (offload, False)
            zt.write(b"a" * 100_000)  # before: through the kernel when offloaded
            await _until(lambda: peer_side.count == 100_000, 10)
            _openssl.key_update(peer.get_extra_info("ssl_object"), requested=True)
            peer.write(b"ping")  # the KeyUpdate goes out first, with the old key
            await _until(lambda: zt_side.count == 4, 10)
            zt.write(b"b" * 100_000)  # after zt's own KeyUpdate (RFC 8446 §4.6.3)
            async with asyncio.timeout(10):  # bounded either way: delivered, or failed
                while peer_side.count < 200_000 and not peer_side.lost.done():
                    await asyncio.sleep(0.01)
            lost = peer_side.lost.result() if peer_side.lost.done() else None
            return peer_side.count, lost
        finally:
            zt.abort()
            peer.abort()

    count, lost = run(body())
    ktls.want(False)
    if offload:
        # The kernel still seals with the old key: the peer refuses the first record after zt's
        # KeyUpdate and ends the connection; none of the second 100 kB reaches it.
        assert count == 100_000
        assert isinstance(lost, Exception)
        assert "bad record mac" in str(lost).lower() or "decrypt" in str(lost).lower(), lost
    else:
        assert (count, lost) == (200_000, None)
