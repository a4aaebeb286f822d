"""mTLS contexts for HBONE and the post-handshake identity checks (docs/design.md §2).

TLS 1.3 only; cipher suites TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256 only; ALPN `h2`;
no SNI is relied upon; no session resumption (server: `num_tickets = 0`).

Python's `ssl` cannot choose TLS 1.3 suites, so `_suites.restrict` sets them on each context's own
SSL_CTX (never process-wide). ALPN and identities are checked by `verify_server_peer` /
`verify_client_peer` after the handshake: OpenSSL servers proceed without ALPN agreement.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable, Sequence

from cryptography import x509

from zt.identity import _suites
from zt.identity.certs import WorkloadCert, spiffe_ids, uri_sans
from zt.identity.errors import (
    AlpnNotH2,
    CertificateFileError,
    ForeignTrustDomain,
    NoPeerIdentity,
    PeerCertificateMissing,
    PeerIdentityMismatch,
)
from zt.identity.spiffe import SpiffeId

ALPN = "h2"
SslConn = ssl.SSLObject | ssl.SSLSocket


def _base(purpose: ssl._SSLMethod, cert: WorkloadCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols([ALPN])
    # TLS <= 1.2 is disabled above; narrowing its list too keeps get_ciphers() and logs honest.
    ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    _suites.restrict(ctx)
    ctx.load_verify_locations(cadata=cert.roots_pem.decode("ascii"))
    _load_chain(ctx, cert)
    return ctx


def server_context(cert: WorkloadCert) -> ssl.SSLContext:
    """TLS 1.3 only, the two AES-GCM suites, ALPN h2, client certificate required, no tickets."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, cert)
    ctx.num_tickets = 0  # no session resumption: every connection proves its identity afresh
    return ctx


def client_context(cert: WorkloadCert) -> ssl.SSLContext:
    """Same restrictions; the chain is verified to `cert.roots_pem`, hostnames are not checked
    (the SAN check is `verify_server_peer`)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # setting check_hostname off keeps this, restate it
    return ctx


@functools.lru_cache(maxsize=1024)
def cached_server_context(cert: WorkloadCert) -> ssl.SSLContext:
    """`server_context`, built once per certificate (building one takes 1.5-3 ms here).
    Callers must not modify the shared context."""
    return server_context(cert)


@functools.lru_cache(maxsize=1024)
def cached_client_context(cert: WorkloadCert) -> ssl.SSLContext:
    """`client_context`, built once per certificate; callers must not modify it."""
    return client_context(cert)


def rotating_server_context(current: Callable[[], WorkloadCert]) -> ssl.SSLContext:
    """A server context that presents `current()`'s certificate at every handshake, so a listener
    keeps serving across renewals. OpenSSL calls the servername callback for every ClientHello,
    with or without SNI (name None), and switching `SSLObject.context` there selects the
    certificate (and the identical verification settings) of the renewed context."""
    ctx = server_context(current())

    def select(obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.context = cached_server_context(current())

    ctx.sni_callback = select
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: WorkloadCert) -> None:
    """`load_cert_chain` only reads files: hand it an anonymous in-memory file so the private key
    never touches a disk."""
    fd = os.memfd_create("zt-workload-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert.cert_pem + cert.chain_pem + cert.key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise CertificateFileError(
            f"certificate for {cert.identity}: OpenSSL refused the key/chain ({exc})"
        ) from None
    finally:
        os.close(fd)


def _peer_sans(conn: SslConn) -> tuple[str, ...]:
    der = conn.getpeercert(binary_form=True)
    if der is None:
        raise PeerCertificateMissing("peer presented no certificate")
    return uri_sans(x509.load_der_x509_certificate(der))


def check_alpn(conn: SslConn) -> None:
    """docs/design.md §2: "ALPN `h2`" — a peer that did not agree on h2 is refused."""
    got = conn.selected_alpn_protocol()
    if got != ALPN:
        raise AlpnNotH2(got)


def verify_server_peer(conn: SslConn, expected: Sequence[SpiffeId | str]) -> SpiffeId:
    """Client side, after the handshake: ALPN is h2 and "one URI SAN of the leaf equals one of the
    *expected* identities" (docs/design.md §2). `expected` may mix SpiffeIds and URI strings (Service
    `subjectAltNames`). Returns the matching identity."""
    check_alpn(conn)
    sans = _peer_sans(conn)
    wanted = {str(e) for e in expected}
    for sid in spiffe_ids(sans):
        if str(sid) in wanted:
            return sid
    raise PeerIdentityMismatch(list(expected), sans)


def verify_client_peer(conn: SslConn, trust_domain: str) -> SpiffeId:
    """Server side, after the handshake: ALPN is h2, the client's first URI SAN is a SPIFFE id in
    our trust domain ("The first URI SAN is the peer identity used by policy and logs")."""
    check_alpn(conn)
    sans = _peer_sans(conn)
    if not sans:
        raise NoPeerIdentity(sans)
    ids = spiffe_ids(sans[:1])
    if not ids:
        raise NoPeerIdentity(sans)
    if ids[0].trust_domain != trust_domain:
        raise ForeignTrustDomain(trust_domain, ids[0].trust_domain)
    return ids[0]
