"""The contexts' settings as OpenSSL reports them (no sockets; the loopback tests prove behaviour)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from zt.identity import _suites
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateFileError, CipherSuiteSetupError
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import (
    cached_client_context,
    cached_server_context,
    client_context,
    server_context,
)

NOW = 1_900_000_000.0


@pytest.fixture
def cert(tmp_path: Path) -> WorkloadCert:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    return ca.issue(SpiffeId("cluster.local", "a", "b"), now=NOW)


def _tls13(ctx: ssl.SSLContext) -> list[str]:
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]


@pytest.mark.parametrize("factory", [server_context, client_context])
def test_restrictions(factory: object, cert: WorkloadCert) -> None:
    assert callable(factory)
    ctx = factory(cert)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert _tls13(ctx) == ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname
    assert ctx.options & ssl.OP_NO_TICKET
    subject = ctx.get_ca_certs()[0]["subject"]
    assert subject == (
        (("organizationName", "cluster.local"),),
        (("commonName", "zt embedded CA cluster.local"),),
    )


def test_server_sends_no_tickets(cert: WorkloadCert) -> None:
    assert server_context(cert).num_tickets == 0


def test_restriction_is_per_context_not_process_wide(cert: WorkloadCert) -> None:
    server_context(cert)
    plain = ssl.create_default_context()
    assert "TLS_CHACHA20_POLY1305_SHA256" in _tls13(plain)


def test_set_tls13_suites_verifies_what_openssl_took() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _suites.set_tls13_suites(ctx, ("TLS_CHACHA20_POLY1305_SHA256",))
    assert _tls13(ctx) == ["TLS_CHACHA20_POLY1305_SHA256"]
    with pytest.raises(CipherSuiteSetupError, match="refused"):
        _suites.set_tls13_suites(ctx, ("NOT_A_SUITE",))


def test_cached_contexts_are_shared_per_cert(cert: WorkloadCert) -> None:
    assert cached_server_context(cert) is cached_server_context(cert)
    assert cached_client_context(cert) is cached_client_context(cert)
    assert cached_client_context(cert) is not cached_server_context(cert)


def test_bad_key_is_a_typed_error(cert: WorkloadCert, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other", now=NOW).issue(
        SpiffeId("cluster.local", "x", "y"), now=NOW
    )
    broken = WorkloadCert(
        identity=cert.identity,
        cert_pem=cert.cert_pem,
        key_pem=other.key_pem,
        chain_pem=b"",
        roots_pem=cert.roots_pem,
        not_before=cert.not_before,
        not_after=cert.not_after,
    )
    with pytest.raises(CertificateFileError, match="OpenSSL refused the key/chain"):
        server_context(broken)
