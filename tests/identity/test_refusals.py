"""The refusal matrix over real loopback sockets, each with the typed error its side reports.

Peers are zt's own contexts, or Python `ssl` contexts built here with one rule deliberately broken.
In TLS 1.3 the client finishes its handshake before the server has judged the client certificate,
so for client-side faults the server reports the typed error and the client sees the connection end
(EOF) without a greeting. asyncio closes without flushing OpenSSL's alert, so peers of a zt server see
EOF rather than an alert.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.identity.loopback import Side, exchange, peer_context, plain_server, run, zt_client
from tests.identity.pki import CLIENT, FOREIGN, SERVER, Pki
from zt.errors import H2_CONNECT_ERROR
from zt.identity.certs import WorkloadCert
from zt.identity.errors import (
    AlpnNotH2,
    ForeignTrustDomain,
    HandshakeFailed,
    NoPeerIdentity,
    NoSharedCipher,
    PeerCertificateExpired,
    PeerCertificateMissing,
    PeerCertificateNotYetValid,
    PeerCertificateUntrusted,
    PeerIdentityMismatch,
    TlsError,
    TlsVersionRefused,
)
from zt.identity.handshake import server_handshake
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context

DAY = 86400.0


def _zt_server_vs(
    pki: Pki, client_ctx: ssl.SSLContext, host: str = "127.0.0.1"
) -> tuple[Side, Side]:
    sctx = server_context(pki.issue(SERVER))
    out = run(lambda: exchange(sctx, client_ctx, [SERVER], host=host))
    return out.server, out.client


def _refused_quietly(client: Side) -> None:
    """What a client whose certificate the zt server refused observes: no greeting, just the end."""
    if client.result == SERVER:
        assert client.read == b"" or isinstance(client.read, TlsError)
    else:
        assert isinstance(client.result, TlsError)


def _assert_connection_level(err: TlsError) -> None:
    assert err.http_status == 503
    assert err.h2_error_code == H2_CONNECT_ERROR


# --- a zt server refusing clients ------------------------------------------------------------


def test_client_without_certificate(pki: Pki) -> None:
    bare = peer_context("client", roots=pki.ca.roots_pem)  # ALPN h2, TLS 1.3, but no cert
    server, client = _zt_server_vs(pki, bare)
    assert isinstance(server.result, PeerCertificateMissing)
    assert server.result.reason == "peer_cert_missing"
    assert "peer sent no certificate" in str(server.result)
    _assert_connection_level(server.result)
    _refused_quietly(client)


def test_client_certificate_from_another_ca(pki: Pki) -> None:
    cert = pki.issue(CLIENT, ca=pki.other_ca)
    ctx = peer_context("client", roots=pki.ca.roots_pem, cert=cert)  # trusts us, we don't trust it
    server, client = _zt_server_vs(pki, ctx)
    assert isinstance(server.result, PeerCertificateUntrusted)
    assert server.result.reason == "peer_cert_untrusted"
    assert "client certificate rejected: unable to get local issuer certificate" in str(
        server.result
    )
    _refused_quietly(client)


def test_client_from_foreign_trust_domain(pki: Pki) -> None:
    cctx = client_context(pki.issue(FOREIGN, ca=pki.foreign_td))
    server, client = _zt_server_vs(pki, cctx)
    assert isinstance(server.result, ForeignTrustDomain)
    assert str(server.result) == (
        "client identity: expected trust domain 'cluster.local', got 'other.td'"
    )
    assert server.result.reason == "foreign_trust_domain"
    assert client.result == SERVER and client.read == b""


def test_client_foreign_trust_domain_over_ipv6(pki: Pki) -> None:
    cctx = client_context(pki.issue(FOREIGN, ca=pki.foreign_td))
    server, _ = _zt_server_vs(pki, cctx, host="::1")
    assert isinstance(server.result, ForeignTrustDomain)


@pytest.mark.parametrize(
    ("offset", "error", "words"),
    [
        (-2 * DAY, PeerCertificateExpired, "certificate has expired"),
        (+3600.0, PeerCertificateNotYetValid, "certificate is not yet valid"),
    ],
)
def test_client_leaf_outside_validity(
    pki: Pki, offset: float, error: type[TlsError], words: str
) -> None:
    cctx = client_context(pki.issue(CLIENT, offset=offset))
    server, client = _zt_server_vs(pki, cctx)
    assert isinstance(server.result, error)
    assert f"client certificate rejected: {words}" in str(server.result)
    _refused_quietly(client)


def test_client_tls12_only(pki: Pki) -> None:
    ctx = peer_context("client", roots=pki.ca.roots_pem, cert=pki.issue(CLIENT), tls12_only=True)
    server, client = _zt_server_vs(pki, ctx)
    assert isinstance(server.result, TlsVersionRefused)
    assert "offered only TLS versions below 1.3" in str(server.result)
    assert isinstance(client.result, TlsError)


def test_client_offering_only_chacha20(pki: Pki) -> None:
    ctx = peer_context(
        "client",
        roots=pki.ca.roots_pem,
        cert=pki.issue(CLIENT),
        suites=("TLS_CHACHA20_POLY1305_SHA256",),
    )
    server, client = _zt_server_vs(pki, ctx)
    assert isinstance(server.result, NoSharedCipher)
    assert "offered none of TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256" in str(server.result)
    assert isinstance(client.result, TlsError)


@pytest.mark.parametrize("alpn", [None, ("http/1.1",)])
def test_client_without_alpn_h2(pki: Pki, alpn: tuple[str, ...] | None) -> None:
    ctx = peer_context("client", roots=pki.ca.roots_pem, cert=pki.issue(CLIENT), alpn=alpn)
    server, client = _zt_server_vs(pki, ctx)
    assert isinstance(server.result, AlpnNotH2)
    assert str(server.result) == "ALPN: expected 'h2', got None; HBONE needs HTTP/2"
    assert server.result.reason == "alpn_not_h2"
    # our client check refuses the same connection from its side too
    assert isinstance(client.result, AlpnNotH2)


# --- a zt client refusing servers -------------------------------------------------------------


def test_server_certificate_from_another_ca(pki: Pki) -> None:
    sctx = server_context(pki.issue(SERVER, ca=pki.other_ca))
    out = run(lambda: exchange(sctx, client_context(pki.issue(CLIENT)), [SERVER]))
    assert isinstance(out.client.result, PeerCertificateUntrusted)
    assert "server certificate rejected:" in str(out.client.result)
    assert isinstance(out.server.result, TlsError)


def test_expected_identity_mismatch(pki: Pki) -> None:
    wanted = [SpiffeId("cluster.local", "shop", "db"), SpiffeId("cluster.local", "shop", "cache")]
    sctx = server_context(pki.issue(SERVER))
    out = run(lambda: exchange(sctx, client_context(pki.issue(CLIENT)), wanted))
    err = out.client.result
    assert isinstance(err, PeerIdentityMismatch)
    assert str(err) == (
        "server identity: expected one of ['spiffe://cluster.local/ns/shop/sa/db', "
        "'spiffe://cluster.local/ns/shop/sa/cache'], got URI SANs "
        "['spiffe://cluster.local/ns/shop/sa/server']"
    )
    assert err.reason == "peer_identity_mismatch"
    _assert_connection_level(err)


def test_server_from_foreign_trust_domain_is_a_mismatch(pki: Pki) -> None:
    foreign_server = SpiffeId("other.td", "shop", "server")
    sctx = server_context(pki.issue(foreign_server, ca=pki.foreign_td))
    out = run(lambda: exchange(sctx, client_context(pki.issue(CLIENT)), [SERVER]))
    assert isinstance(out.client.result, PeerIdentityMismatch)
    assert out.client.result.got == (str(foreign_server),)


@pytest.mark.parametrize(
    ("offset", "error", "words"),
    [
        (-2 * DAY, PeerCertificateExpired, "certificate has expired"),
        (+3600.0, PeerCertificateNotYetValid, "certificate is not yet valid"),
    ],
)
def test_server_leaf_outside_validity(
    pki: Pki, offset: float, error: type[TlsError], words: str
) -> None:
    sctx = server_context(pki.issue(SERVER, offset=offset))
    out = run(lambda: exchange(sctx, client_context(pki.issue(CLIENT)), [SERVER]))
    assert isinstance(out.client.result, error)
    assert f"server certificate rejected: {words}" in str(out.client.result)


def test_server_without_alpn(pki: Pki) -> None:
    plain = peer_context("server", roots=pki.ca.roots_pem, cert=pki.issue(SERVER), alpn=None)
    side = Side()
    cctx = client_context(pki.issue(CLIENT))

    async def scenario() -> None:
        async with plain_server(plain) as port:
            await zt_client(cctx, [SERVER], "127.0.0.1", port, side)

    run(scenario)
    assert isinstance(side.result, AlpnNotH2)
    assert side.result.got is None


def test_server_tls12_only_python_peer(pki: Pki) -> None:
    """A Python TLS 1.2 server behind asyncio sends no alert: the client sees a failed handshake."""
    plain = peer_context("server", roots=pki.ca.roots_pem, cert=pki.issue(SERVER), tls12_only=True)
    side = Side()
    cctx = client_context(pki.issue(CLIENT))

    async def scenario() -> None:
        async with plain_server(plain) as port:
            await zt_client(cctx, [SERVER], "127.0.0.1", port, side)

    run(scenario)
    assert isinstance(side.result, TlsError)
    assert side.result.reason in {"tls_version_refused", "tls_handshake_failed"}


def _leaf_with_sans(pki: Pki, sans: list[x509.GeneralName]) -> WorkloadCert:
    """A leaf from the mesh CA whose SANs zt would never issue (an operator's odd PKI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.fromtimestamp(pki.now - 60, tz=dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    leaf = builder.sign(pki.ca.key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return WorkloadCert(
        identity=CLIENT,  # what the test pretends; the certificate says otherwise
        cert_pem=leaf.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        chain_pem=b"",
        roots_pem=pki.ca.roots_pem,
        not_before=start.timestamp(),
        not_after=start.timestamp() + 3600,
    )


@pytest.mark.parametrize(
    ("sans", "got"),
    [
        ([], "[]"),
        ([x509.DNSName("client.shop")], "[]"),
        (
            [x509.UniformResourceIdentifier("https://shop.example/client")],
            "['https://shop.example/client']",
        ),
    ],
)
def test_client_without_spiffe_identity(pki: Pki, sans: list[x509.GeneralName], got: str) -> None:
    ctx = peer_context("client", roots=pki.ca.roots_pem, cert=_leaf_with_sans(pki, sans))
    server, _ = _zt_server_vs(pki, ctx)
    assert isinstance(server.result, NoPeerIdentity)
    assert str(server.result) == (
        f"peer certificate: expected a URI SAN spiffe://<td>/ns/<ns>/sa/<sa>, got URI SANs {got}"
    )


def test_client_first_uri_san_is_the_identity(pki: Pki) -> None:
    """docs/design.md §2: The first URI SAN is the peer identity used by policy and logs."""
    second = SpiffeId("cluster.local", "shop", "second")
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(str(CLIENT)),
        x509.UniformResourceIdentifier(str(second)),
    ]
    ctx = peer_context("client", roots=pki.ca.roots_pem, cert=_leaf_with_sans(pki, sans))
    server, _ = _zt_server_vs(pki, ctx)
    assert server.result == CLIENT


def test_silent_client_times_out(pki: Pki) -> None:
    """A client that connects and never says ClientHello is dropped after the handshake timeout."""
    sctx = server_context(pki.issue(SERVER))
    results: list[BaseException] = []

    async def scenario() -> None:
        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await server_handshake(w, sctx, "cluster.local", timeout=0.3)
            except TlsError as exc:
                results.append(exc)
            finally:
                w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", server.sockets[0].getsockname()[1]
            )
            for _ in range(50):  # bounded: at most 5 s
                if results:
                    break
                await asyncio.sleep(0.1)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    run(scenario)
    assert len(results) == 1
    assert isinstance(results[0], HandshakeFailed)
    assert str(results[0]) == "TLS handshake with client timed out"
