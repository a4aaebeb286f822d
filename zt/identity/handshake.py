"""The boundary where ssl/socket exceptions from a handshake become typed zt errors, plus thin
asyncio adapters that run a handshake on a stream and check the peer (docs/design.md §2)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence

from zt.identity.errors import (
    HandshakeFailed,
    NoSharedCipher,
    PeerCertificateExpired,
    PeerCertificateMissing,
    PeerCertificateNotYetValid,
    PeerCertificateUntrusted,
    RefusedByPeer,
    TlsError,
    TlsVersionRefused,
)
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import verify_client_peer, verify_server_peer

HANDSHAKE_TIMEOUT = 10.0

# X509_V_ERR_* codes (openssl/x509_vfy.h) -> our class.
_VERIFY: dict[int, type[TlsError]] = {
    9: PeerCertificateNotYetValid,  # X509_V_ERR_CERT_NOT_YET_VALID
    10: PeerCertificateExpired,  # X509_V_ERR_CERT_HAS_EXPIRED
    2: PeerCertificateUntrusted,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: PeerCertificateUntrusted,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: PeerCertificateUntrusted,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: PeerCertificateUntrusted,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: PeerCertificateUntrusted,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    7: PeerCertificateUntrusted,  # X509_V_ERR_CERT_SIGNATURE_FAILURE
}

# OpenSSL reason strings raised on *our* side.
_REASONS: dict[str, tuple[type[TlsError], str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": (PeerCertificateMissing, "peer sent no certificate"),
    "UNSUPPORTED_PROTOCOL": (TlsVersionRefused, "peer offered only TLS versions below 1.3"),
    "WRONG_SSL_VERSION": (TlsVersionRefused, "peer answered with a TLS version below 1.3"),
    "TLSV1_ALERT_PROTOCOL_VERSION": (TlsVersionRefused, "peer does not speak TLS 1.3"),
    "NO_SHARED_CIPHER": (
        NoSharedCipher,
        "peer offered none of TLS_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256",
    ),
    "NO_SUITABLE_KEY_SHARE": (HandshakeFailed, "no key share in common"),
}


def tls_error(exc: BaseException, *, peer: str = "peer") -> TlsError:
    """Translate an exception from a TLS handshake (or the first read after it) into a TlsError."""
    if isinstance(exc, TlsError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        cls = _VERIFY.get(exc.verify_code, PeerCertificateUntrusted)
        msg = f"{peer} certificate rejected: {exc.verify_message}"
        return cls(msg, detail=f"X509_V_ERR {exc.verify_code}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return _from_ssl_error(exc, peer)
    # asyncio reports its ssl_handshake_timeout as ConnectionAbortedError("SSL handshake is taking
    # longer than N seconds: aborting the connection").
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return HandshakeFailed(f"TLS handshake with {peer} timed out")
    if isinstance(exc, ConnectionError | EOFError):
        return HandshakeFailed(f"{peer} closed the connection during the TLS handshake")
    return HandshakeFailed(f"TLS handshake with {peer} failed: {exc!r}")


def _from_ssl_error(exc: ssl.SSLError, peer: str) -> TlsError:
    reason = str(exc.reason or "")
    if reason in _REASONS:
        cls, text = _REASONS[reason]
        return cls(f"{peer}: {text}", detail=reason)
    if (
        "ALERT" in reason
    ):  # the peer aborted with an alert: it refused us (e.g. TLSV1_ALERT_UNKNOWN_CA)
        alert = reason.split("ALERT_", 1)[-1].lower()
        return RefusedByPeer(
            f"{peer} refused the handshake with alert {alert!r}", detail=reason, alert=alert
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return HandshakeFailed(f"{peer} closed the connection during the TLS handshake")
    return HandshakeFailed(f"TLS handshake with {peer} failed: {reason or exc}", detail=reason)


def _ssl_object(writer: asyncio.StreamWriter) -> ssl.SSLObject:
    obj = writer.get_extra_info("ssl_object")
    assert isinstance(obj, ssl.SSLObject)
    return obj


async def server_handshake(
    writer: asyncio.StreamWriter,
    ctx: ssl.SSLContext,
    trust_domain: str,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SpiffeId:
    """Upgrade an accepted stream to mTLS and return the client's identity, or raise a TlsError."""
    try:
        await writer.start_tls(ctx, ssl_handshake_timeout=timeout)
    except (ssl.SSLError, OSError, TimeoutError, EOFError) as exc:
        raise tls_error(exc, peer="client") from exc
    return verify_client_peer(_ssl_object(writer), trust_domain)


async def client_handshake(
    writer: asyncio.StreamWriter,
    ctx: ssl.SSLContext,
    expected: Sequence[SpiffeId | str],
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> SpiffeId:
    """Upgrade a connected stream to mTLS and return the server identity that matched `expected`.

    TLS 1.3 clients finish before the server has judged their certificate: a refusal of *our*
    certificate surfaces on the first read, which callers translate with `tls_error` too.
    """
    try:
        await writer.start_tls(ctx, server_hostname=None, ssl_handshake_timeout=timeout)
    except (ssl.SSLError, OSError, TimeoutError, EOFError) as exc:
        raise tls_error(exc, peer="server") from exc
    return verify_server_peer(_ssl_object(writer), expected)
