"""zt's HBONE relay with kTLS TX on both ends of every connection, on a kernel that has it.

(a) OpenSSL hands the transmit side to the kernel on zt's HBONE connections (TCP_ULP "tls", a
TLS_TX crypto state, zt_ktls_tx_connections_total); (b) the relay conformance suite of
tests/proxy/test_relay.py (byte-exact both ways, 8 MiB full duplex, every FIN order, resets,
connection loss, 200 concurrent tunnels) passes unchanged over such connections.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from tests.proxy.helpers import Pki, echo_handler, read_all, run, zt_pair

# The conformance tests, collected again here: with `ktls_on` (autouse below) every connection
# they make asks OpenSSL for kTLS.
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
from zt.proxy import ktls
from zt.proxy.tlssocket import TlsSocketTransport

pytestmark = pytest.mark.usefixtures("ktls_on")


def _counter(name: str) -> float:
    return next(value for n, _help, _kind, value in ktls.samples() if n == name)


def test_hbone_connection_transmits_through_the_kernel(pki: Pki) -> None:
    before = _counter("zt_ktls_tx_connections_total")

    async def body() -> tuple[bytes, bytes, tuple[bool, bool]]:
        async with zt_pair(pki, echo_handler) as pair:
            transport = pair.client.transport
            assert isinstance(transport, TlsSocketTransport)
            sock = transport.get_extra_info("socket")
            ulp = socket.socket.getsockopt(sock, socket.IPPROTO_TCP, ktls.TCP_ULP, 16)
            reader, writer = await asyncio.open_connection(str(pair.app.ip), pair.app.port)
            payload = os.urandom(4 << 20)
            writer.write(payload)
            writer.write_eof()
            echoed = await read_all(reader)
            writer.close()
            assert echoed == payload
            return ulp.rstrip(b"\0"), echoed[:16], ktls.connection_ktls(sock)

    ulp, _head, offload = run(body(), timeout=120)
    assert ulp == b"tls"
    assert offload == (True, False)  # OpenSSL 3.0, TLS 1.3: transmit only
    # client and server side of the pooled connection, at least
    assert _counter("zt_ktls_tx_connections_total") >= before + 2
    status = ktls.status()
    assert (status.mode, status.enabled) == ("on", True)
