"""zt's relay with DATA payloads spliced into kTLS sockets (zt/proxy/zerocopy.py, `--splice`).

(a) the payload bytes of a bulk echo go app socket → pipe → kTLS socket on both ends of the tunnel
(zt_splice_bytes_total), and come out byte-exact; (b) the relay conformance suite of
tests/proxy/test_relay.py (both ways, 8 MiB full duplex, every FIN order, resets, connection
loss) passes unchanged with splice on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.proxy.helpers import Pki, echo_handler, read_all, run, zt_pair

# The conformance tests, collected again here: with `splice_on` (below) every relay splices.
from tests.proxy.test_relay import (  # noqa: F401
    test_app_fin_first_then_target_answers,
    test_app_reset_reaches_target_as_reset,
    test_connection_loss_resets_the_app,
    test_full_duplex_8mib_each_way,
    test_reset_after_target_fin_resets_app,
    test_simultaneous_fin,
    test_small_echo_byte_exact,
    test_target_fin_first_then_app_keeps_sending,
    test_target_reset_reaches_app_as_reset,
)
from zt.proxy import zerocopy
from zt.proxy.tlssocket import TlsSocketTransport


@pytest.fixture(autouse=True)
def splice_on(ktls_on: None) -> Iterator[None]:
    zerocopy.configure(True)
    try:
        yield
    finally:
        zerocopy.configure(False)


def _counter(name: str) -> float:
    return next(value for n, _help, _kind, value in zerocopy.samples() if n == name)


def test_bulk_payload_is_spliced_on_both_ends(pki: Pki) -> None:
    before = _counter("zt_splice_bytes_total")
    payload = os.urandom(4 << 20)

    async def body() -> tuple[bytes, bool]:
        async with zt_pair(pki, echo_handler) as pair:
            transport = pair.client.transport
            assert isinstance(transport, TlsSocketTransport)
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            # A first echo: both relays have begun, so no byte of the bulk is an early byte
            # (those are replayed from memory, not spliced).
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.write(payload)
            writer.write_eof()
            echoed = await read_all(reader)
            writer.close()
            return echoed, transport.holds

    echoed, holds = run(body(), timeout=120)
    assert holds
    assert echoed == payload
    # the client's relay spliced the upload, the server's relay the echo back
    assert _counter("zt_splice_bytes_total") - before >= 2 * len(payload)
    assert _counter("zt_splice_frames_total") > 0
