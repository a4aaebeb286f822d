"""Identity failures: bad SPIFFE ids, CA state problems, and every way an mTLS handshake is refused.

HBONE runs over the TLS connection, so a TLS or peer-identity failure fails the whole connection:
those classes answer 503 and reset with CONNECT_ERROR (RFC 9113 §8.5: "the CONNECT_ERROR code ...
if the TCP connection was closed abnormally") and carry a short `reason` for logs and metrics.
"""

# The class names are an API contract other rooms code against (InvalidSpiffeId,
# PeerIdentityMismatch, ForeignTrustDomain, ...): they name the failure, not the Python category.

from __future__ import annotations

from collections.abc import Sequence

from zt.errors import H2_CONNECT_ERROR, NotFoundError, UsageError, ZtError


class InvalidSpiffeId(UsageError):
    """A string that is not `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`."""

    reason = "invalid_spiffe_id"

    def __init__(self, value: object, problem: str, *, field: str = "spiffe id") -> None:
        self.value = value
        self.problem = problem
        super().__init__(
            f"{field}: got {value!r}, expected spiffe://<trust-domain>/ns/<namespace>/sa/"
            f"<service-account> ({problem})"
        )


# --- certificate authority state ----------------------------------------------------------------


class CaError(ZtError):
    """The CA state directory or operator-supplied CA files cannot be used."""

    reason = "ca_error"
    exit_code = 2


class CaExists(CaError):
    """`init` found a CA already in the directory and was not forced."""

    reason = "ca_exists"

    def __init__(self, directory: object) -> None:
        self.directory = directory
        super().__init__(f"a CA already exists in {directory}; pass --force to replace it")


class CaNotFound(NotFoundError, CaError):
    """No CA in the state directory."""

    reason = "ca_not_found"

    def __init__(self, directory: object) -> None:
        self.directory = directory
        super().__init__(
            f"no CA in {directory} (expected ca.pem, ca.key); run `zt ca init --ca-dir {directory}`"
        )


class CaInvalid(CaError):
    """CA files exist but are unreadable, mismatched, or not a CA."""

    reason = "ca_invalid"


class CertificateFileError(CaError):
    """A pre-issued certificate, key or bundle file is missing or malformed."""

    reason = "cert_file_invalid"


class CertificateUnavailable(NotFoundError):
    """A certificate source has no (currently valid) certificate for the identity."""

    reason = "cert_unavailable"
    http_status = 503


# --- TLS / peer identity: connection-level failures on HBONE -------------------------------------


class TlsError(ZtError):
    """An mTLS connection was refused: the handshake failed or the peer is not who it must be."""

    http_status = 503
    h2_error_code = H2_CONNECT_ERROR
    reason = "tls_error"
    exit_code = 1

    def __init__(self, message: str, *, detail: str = "") -> None:
        self.detail = detail  # the OpenSSL reason / verify message, when there is one
        super().__init__(message)


class HandshakeFailed(TlsError):
    """The TLS handshake failed for a reason without a more specific class."""

    reason = "tls_handshake_failed"


class PeerCertificateMissing(TlsError):
    """The peer presented no certificate (a server requires one from every client)."""

    reason = "peer_cert_missing"


class PeerCertificateUntrusted(TlsError):
    """The peer's chain does not lead to our trust bundle (another CA, or self-signed)."""

    reason = "peer_cert_untrusted"


class PeerCertificateExpired(TlsError):
    """The peer's certificate is past its notAfter."""

    reason = "peer_cert_expired"


class PeerCertificateNotYetValid(TlsError):
    """The peer's certificate is before its notBefore."""

    reason = "peer_cert_not_yet_valid"


class TlsVersionRefused(TlsError):
    """The peer does not speak TLS 1.3 (docs/design.md §2: TLS 1.3 only)."""

    reason = "tls_version_refused"


class NoSharedCipher(TlsError):
    """No cipher suite in common: zt offers only TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256."""

    reason = "tls_no_shared_cipher"


class RefusedByPeer(TlsError):
    """The peer aborted the handshake with an alert (it refused our certificate or parameters)."""

    reason = "tls_refused_by_peer"

    def __init__(self, message: str, *, detail: str = "", alert: str = "") -> None:
        self.alert = alert
        super().__init__(message, detail=detail)


class AlpnNotH2(TlsError):
    """The handshake completed without agreeing on ALPN `h2` (docs/design.md §2: "ALPN `h2`")."""

    reason = "alpn_not_h2"

    def __init__(self, got: str | None) -> None:
        self.got = got
        super().__init__(f"ALPN: expected 'h2', got {got!r}; HBONE needs HTTP/2")


class PeerIdentityError(TlsError):
    """The peer's certificate chains to our roots but its identity is not acceptable."""

    reason = "peer_identity_error"


class NoPeerIdentity(PeerIdentityError):
    """The peer's leaf carries no URI SAN that is a SPIFFE workload id."""

    reason = "peer_identity_missing"

    def __init__(self, got: Sequence[str]) -> None:
        self.got = tuple(got)
        super().__init__(
            "peer certificate: expected a URI SAN spiffe://<td>/ns/<ns>/sa/<sa>, "
            f"got URI SANs {list(self.got)!r}"
        )


class PeerIdentityMismatch(PeerIdentityError):
    """Client side: no URI SAN of the server's leaf is one of the expected identities."""

    reason = "peer_identity_mismatch"

    def __init__(self, expected: Sequence[object], got: Sequence[str]) -> None:
        self.expected = tuple(str(e) for e in expected)
        self.got = tuple(got)
        super().__init__(
            f"server identity: expected one of {list(self.expected)!r}, "
            f"got URI SANs {list(self.got)!r}"
        )


class ForeignTrustDomain(PeerIdentityError):
    """Server side: the client's identity belongs to another trust domain."""

    reason = "foreign_trust_domain"

    def __init__(self, expected: str, got: str) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"client identity: expected trust domain {expected!r}, got {got!r}")


class InvalidTrustDomain(UsageError):
    """A trust domain name outside SPIFFE's character rules."""

    reason = "invalid_trust_domain"

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(
            f"trust domain: got {value!r}, expected lowercase letters, digits, '.', '-', '_' "
            "(e.g. cluster.local)"
        )


class WrongTrustDomain(UsageError):
    """A CA was asked to issue for an identity outside its trust domain."""

    reason = "wrong_trust_domain"

    def __init__(self, identity: object, trust_domain: str) -> None:
        self.identity = identity
        self.trust_domain = trust_domain
        super().__init__(
            f"identity: got {str(identity)!r}, expected one in trust domain {trust_domain!r} "
            "(this CA's)"
        )


class CipherSuiteSetupError(ZtError):
    """zt could not restrict TLS 1.3 cipher suites and refuses to run with OpenSSL's defaults."""

    reason = "tls_suites_unavailable"


class CertificateRefused(ZtError):
    """The fleet signer refused a certificate request (zt/fleet/csr.py names each `refusal`:
    workload_not_on_node, unknown_node, bad_node_signature, ...)."""

    reason = "cert_refused"
    http_status = 503

    def __init__(self, refusal: str, message: str) -> None:
        self.refusal = refusal
        super().__init__(f"certificate refused: {refusal}: {message}")
