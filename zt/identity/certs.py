"""A workload's key and certificate as plain bytes, and what zt reads out of certificates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zt.identity._files import KEY_MODE, write_atomic
from zt.identity.errors import CertificateFileError, InvalidSpiffeId
from zt.identity.spiffe import SpiffeId


def uri_sans(cert: x509.Certificate) -> tuple[str, ...]:
    """Every URI SAN of `cert`, in certificate order (empty when it has no SAN extension)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_ids(sans: tuple[str, ...]) -> tuple[SpiffeId, ...]:
    """The URI SANs that are SPIFFE workload ids; other URIs are ignored."""
    out: list[SpiffeId] = []
    for san in sans:
        try:
            out.append(SpiffeId.parse(san))
        except InvalidSpiffeId:
            continue
    return tuple(out)


def fingerprint(cert_der: bytes) -> str:
    """SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it (AB:CD:...)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(cert_der).digest())


def load_pem_certs(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Parse a PEM bundle; the error names what the bundle was for."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateFileError(f"{what}: expected PEM certificates ({exc})") from None
    return certs


@dataclass(frozen=True)
class WorkloadCert:
    """What a workload presents and trusts. Times are unix seconds (the leaf's own validity)."""

    identity: SpiffeId
    cert_pem: bytes  # the leaf
    key_pem: bytes  # PKCS#8 PEM private key
    chain_pem: bytes  # intermediates up to (not including) a root; may be b""
    roots_pem: bytes  # the trust bundle peers are verified against
    not_before: float
    not_after: float

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before

    @property
    def renew_at(self) -> float:
        """Half-life (docs/design.md §3: "renewed at half-life")."""
        return self.not_before + self.lifetime / 2

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after

    @property
    def fingerprint(self) -> str:
        return fingerprint(x509.load_pem_x509_certificate(self.cert_pem).public_bytes(_DER))

    def write(self, prefix: Path) -> tuple[Path, Path, Path]:
        """Write PREFIX.pem (leaf + chain), PREFIX.key (mode 0600) and PREFIX-bundle.pem (roots)."""
        cert_path = prefix.with_name(prefix.name + ".pem")
        key_path = prefix.with_name(prefix.name + ".key")
        bundle_path = prefix.with_name(prefix.name + "-bundle.pem")
        write_atomic(key_path, self.key_pem, KEY_MODE)
        write_atomic(cert_path, self.cert_pem + self.chain_pem)
        write_atomic(bundle_path, self.roots_pem)
        return cert_path, key_path, bundle_path

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, roots_pem: bytes, *, what: str = "certificate"
    ) -> WorkloadCert:
        """Build from PEM: `cert_pem` is the leaf optionally followed by intermediates."""
        certs = load_pem_certs(cert_pem, what=what)
        leaf = certs[0]
        ids = spiffe_ids(uri_sans(leaf))
        if len(ids) != 1:
            raise CertificateFileError(
                f"{what}: expected exactly one SPIFFE URI SAN, got {list(uri_sans(leaf))!r}"
            )
        _check_key_matches(leaf, key_pem, what=what)
        load_pem_certs(roots_pem, what=f"{what} trust bundle")
        return cls(
            identity=ids[0],
            cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
            key_pem=key_pem,
            chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]),
            roots_pem=roots_pem,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )

    @classmethod
    def read(cls, prefix: Path) -> WorkloadCert:
        """Read the three files `write` produces."""
        paths = (
            prefix.with_name(prefix.name + ".pem"),
            prefix.with_name(prefix.name + ".key"),
            prefix.with_name(prefix.name + "-bundle.pem"),
        )
        try:
            cert, key, bundle = (p.read_bytes() for p in paths)
        except OSError as exc:
            raise CertificateFileError(f"{exc.filename}: {exc.strerror}") from None
        return cls.from_pem(cert, key, bundle, what=str(paths[0]))


_DER = serialization.Encoding.DER


def _check_key_matches(leaf: x509.Certificate, key_pem: bytes, *, what: str) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateFileError(f"{what} key: expected an unencrypted PEM key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(_DER, spki) != leaf.public_key().public_bytes(_DER, spki):
        raise CertificateFileError(f"{what}: the private key does not match the certificate")
