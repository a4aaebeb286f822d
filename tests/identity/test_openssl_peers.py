"""zt against the `openssl` CLI: peers zt did not build, for the suite, version and ALPN rules.

Proves the TLS 1.3 suite restriction (set through SSL_CTX_set_ciphersuites on zt's own contexts):
a peer offering only TLS_CHACHA20_POLY1305_SHA256 is refused, one offering only
TLS_AES_128_GCM_SHA256 is accepted.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from tests.identity.loopback import Side, run, s_client, s_server, zt_client, zt_server
from tests.identity.pki import CLIENT, SERVER, Pki
from zt.identity.errors import (
    AlpnNotH2,
    NoSharedCipher,
    RefusedByPeer,
    TlsVersionRefused,
)
from zt.identity.handshake import tls_error
from zt.identity.tls import client_context, server_context, verify_server_peer


def _against_s_client(pki: Pki, *flags: str, host: str = "127.0.0.1") -> tuple[Side, str]:
    files = pki.files(pki.issue(CLIENT), "s_client")
    side = Side()
    sctx = server_context(pki.issue(SERVER))

    async def scenario() -> str:
        async with zt_server(sctx, "cluster.local", host, side) as port:
            peer = await s_client(port, files, *flags, host=host)
        return peer.output

    return side, run(scenario)


@pytest.mark.parametrize(
    ("suite", "host"),
    [
        ("TLS_AES_128_GCM_SHA256", "127.0.0.1"),
        ("TLS_AES_256_GCM_SHA384", "127.0.0.1"),
        ("TLS_AES_128_GCM_SHA256", "::1"),
    ],
)
def test_s_client_with_an_allowed_suite_is_accepted(pki: Pki, suite: str, host: str) -> None:
    side, output = _against_s_client(pki, "-alpn", "h2", "-ciphersuites", suite, host=host)
    assert side.result == CLIENT
    assert side.cipher == suite
    assert f"New, TLSv1.3, Cipher is {suite}" in output
    assert "ALPN protocol: h2" in output


@pytest.mark.parametrize("suite", ["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_CCM_SHA256"])
def test_s_client_with_only_other_suites_is_refused(pki: Pki, suite: str) -> None:
    side, output = _against_s_client(pki, "-alpn", "h2", "-ciphersuites", suite)
    assert isinstance(side.result, NoSharedCipher)
    assert side.result.detail == "NO_SHARED_CIPHER"
    assert "Cipher is (NONE)" in output


def test_s_client_tls12_only_is_refused(pki: Pki) -> None:
    side, output = _against_s_client(pki, "-alpn", "h2", "-tls1_2")
    assert isinstance(side.result, TlsVersionRefused)
    assert side.result.detail == "UNSUPPORTED_PROTOCOL"
    assert "Cipher is (NONE)" in output


def test_s_client_without_alpn_is_refused_by_zt(pki: Pki) -> None:
    """OpenSSL completes the handshake without ALPN agreement; zt's check refuses afterwards."""
    side, output = _against_s_client(pki)
    assert "No ALPN negotiated" in output
    assert isinstance(side.result, AlpnNotH2)


def _against_s_server(pki: Pki, *flags: str) -> Side:
    files = pki.files(pki.issue(SERVER), "s_server")
    side = Side()
    cctx = client_context(pki.issue(CLIENT))

    async def scenario() -> None:
        async with s_server(files, *flags) as port:
            await zt_client(cctx, [SERVER], "127.0.0.1", port, side, greeted=False)

    run(scenario)
    return side


def test_s_server_with_aes128_only_is_accepted(pki: Pki) -> None:
    side = _against_s_server(pki, "-alpn", "h2", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert side.result == SERVER
    assert side.cipher == "TLS_AES_128_GCM_SHA256"


def test_s_server_with_only_chacha20_is_refused(pki: Pki) -> None:
    side = _against_s_server(pki, "-alpn", "h2", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
    assert isinstance(side.result, RefusedByPeer)
    assert side.result.alert == "handshake_failure"
    assert str(side.result) == "server refused the handshake with alert 'handshake_failure'"


def test_s_server_tls12_only_is_refused(pki: Pki) -> None:
    side = _against_s_server(pki, "-alpn", "h2", "-tls1_2")
    assert isinstance(side.result, TlsVersionRefused)
    assert str(side.result) == "server: peer does not speak TLS 1.3"


def test_s_server_without_alpn_is_refused(pki: Pki) -> None:
    side = _against_s_server(pki)
    assert isinstance(side.result, AlpnNotH2)


def test_blocking_socket_client_checks_with_sslsocket(pki: Pki) -> None:
    """verify_server_peer also takes an ssl.SSLSocket (blocking code paths, tools)."""
    files = pki.files(pki.issue(SERVER), "s_server_blocking")
    cctx = client_context(pki.issue(CLIENT))
    got: list[object] = []

    def dial(port: int) -> None:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            cctx.wrap_socket(raw, server_hostname=None) as tls,
        ):
            try:
                got.append(verify_server_peer(tls, [SERVER]))
            except Exception as exc:
                got.append(tls_error(exc))

    async def scenario() -> None:
        async with s_server(files, "-alpn", "h2") as port:
            t = threading.Thread(target=dial, args=(port,))
            t.start()
            await asyncio.to_thread(t.join, 10)

    run(scenario)
    assert got == [SERVER]
