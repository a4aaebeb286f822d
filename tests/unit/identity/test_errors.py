"""The identity error tree and the one place foreign TLS exceptions are translated."""

from __future__ import annotations

import ssl

import pytest

from zt.errors import H2_CONNECT_ERROR, NotFoundError, UsageError, ZtError
from zt.identity import errors as e
from zt.identity.handshake import tls_error


def _ssl_error(reason: str, cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    err = cls(1, f"[SSL: {reason}] {reason.lower()}")
    err.reason = reason
    err.library = "SSL"
    return err


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = code
    err.verify_message = message
    return err


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (_verify_error(10, "certificate has expired"), e.PeerCertificateExpired, "has expired"),
        (_verify_error(9, "certificate is not yet valid"), e.PeerCertificateNotYetValid, "not yet"),
        (
            _verify_error(20, "unable to get local issuer certificate"),
            e.PeerCertificateUntrusted,
            "local issuer",
        ),
        (_verify_error(999, "something new"), e.PeerCertificateUntrusted, "something new"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), e.PeerCertificateMissing, "no cert"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), e.TlsVersionRefused, "below 1.3"),
        (_ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), e.TlsVersionRefused, "TLS 1.3"),
        (_ssl_error("NO_SHARED_CIPHER"), e.NoSharedCipher, "TLS_AES_128_GCM_SHA256"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), e.RefusedByPeer, "alert 'unknown_ca'"),
        (
            _ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            e.RefusedByPeer,
            "alert 'certificate_required'",
        ),
        (_ssl_error("UNEXPECTED_EOF_WHILE_READING", ssl.SSLEOFError), e.HandshakeFailed, "closed"),
        (_ssl_error("SOMETHING_ELSE"), e.HandshakeFailed, "SOMETHING_ELSE"),
        (ConnectionResetError(104, "reset"), e.HandshakeFailed, "closed the connection"),
        (TimeoutError(), e.HandshakeFailed, "timed out"),
        (
            ConnectionAbortedError("SSL handshake is taking longer than 0.3 seconds: aborting"),
            e.HandshakeFailed,
            "TLS handshake with client timed out",
        ),
    ],
)
def test_translation(exc: BaseException, cls: type[e.TlsError], text: str) -> None:
    got = tls_error(exc, peer="client")
    assert type(got) is cls
    assert text in str(got)
    assert got.http_status == 503
    assert got.h2_error_code == H2_CONNECT_ERROR


def test_translation_passes_zt_errors_through() -> None:
    err = e.AlpnNotH2("http/1.1")
    assert tls_error(err) is err


def test_refused_by_peer_keeps_the_alert() -> None:
    got = tls_error(_ssl_error("SSLV3_ALERT_HANDSHAKE_FAILURE"), peer="server")
    assert isinstance(got, e.RefusedByPeer)
    assert got.alert == "handshake_failure"
    assert got.detail == "SSLV3_ALERT_HANDSHAKE_FAILURE"


def test_reasons_are_distinct_and_tree_is_rooted() -> None:
    classes = [
        c
        for c in vars(e).values()
        if isinstance(c, type) and issubclass(c, ZtError) and c.__module__ == e.__name__
    ]
    assert len(classes) >= 20
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons))
    assert issubclass(e.InvalidSpiffeId, UsageError)
    assert issubclass(e.CaNotFound, NotFoundError)
    assert e.CaExists.exit_code == 2


def test_mismatch_message_names_expected_and_got() -> None:
    err = e.PeerIdentityMismatch(["spiffe://td/ns/a/sa/b"], ["spiffe://td/ns/x/sa/y"])
    assert str(err) == (
        "server identity: expected one of ['spiffe://td/ns/a/sa/b'], "
        "got URI SANs ['spiffe://td/ns/x/sa/y']"
    )
    assert err.reason == "peer_identity_mismatch"
