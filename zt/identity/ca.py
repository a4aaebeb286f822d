"""The embedded CA (docs/design.md §3): one ECDSA P-256 root kept on disk, issuing workload leaves.

State directory layout (default /var/lib/zt/ca, mode 0700):
  ca.pem         the signing certificate (followed by its chain when an operator's intermediate)
  ca.key         its private key, mode 0600
  bundle.pem     the trust bundle handed to peers (the root itself for the embedded CA)
  trust-domain   one line, e.g. `cluster.local`
  issued.jsonl   one JSON object per issued leaf, for `zt ca show`
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zt.identity._files import KEY_MODE, write_atomic
from zt.identity.certs import WorkloadCert, fingerprint, load_pem_certs
from zt.identity.errors import CaExists, CaInvalid, CaNotFound, WrongTrustDomain
from zt.identity.spiffe import SpiffeId
from zt.identity.spiffe import trust_domain as check_trust_domain

DEFAULT_DIR = Path("/var/lib/zt/ca")
DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_LEAF_LIFETIME = 86400.0  # docs/design.md §3: "24 h lifetime"
ROOT_LIFETIME = 10 * 365 * 86400.0  # a root valid for years
ROOT_BACKDATE = 3600.0  # tolerate peers whose clock runs up to an hour behind ours

log = logging.getLogger(__name__)
CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


@dataclass(frozen=True)
class IssuedRecord:
    """One line of issued.jsonl."""

    identity: str
    serial: str
    not_before: float
    not_after: float
    fingerprint: str


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(t), tz=dt.UTC)


def _key_pem(key: CaKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def new_root(
    trust_domain: str, now: float, *, label: str = ""
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and its self-signed root (`label` tells a rotated root from the first)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _self_signed_root(key, check_trust_domain(trust_domain), now, label=label)


def key_pem(key: CaKey) -> bytes:
    """PKCS#8 PEM of a CA key (as ca.key holds it)."""
    return _key_pem(key)


def _self_signed_root(
    key: ec.EllipticCurvePrivateKey, td: str, now: float, *, label: str = ""
) -> x509.Certificate:
    cn = f"zt embedded CA {td}" + (f" {label}" if label else "")
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, td),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - ROOT_BACKDATE))
        .not_valid_after(_utc(now + ROOT_LIFETIME))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """Signs workload leaves. Built by `init`/`load` (directory-backed) or `from_pem` (in memory)."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: CaKey,
        *,
        trust_domain: str,
        chain_pem: bytes = b"",
        roots_pem: bytes | None = None,
        directory: Path | None = None,
    ) -> None:
        self.cert = cert
        self.key = key
        self.trust_domain = check_trust_domain(trust_domain)
        self.chain_pem = chain_pem  # the operator CA's own intermediates, sent after each leaf
        own = cert.public_bytes(_PEM)
        # An operator's intermediate: leaves carry it in their chain; peers trust the bundle.
        self.roots_pem = own if roots_pem is None else roots_pem
        self._leaf_chain = b"" if roots_pem is None or own in roots_pem else own + chain_pem
        self.directory = directory

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        force: bool = False,
        now: float | None = None,
    ) -> CertificateAuthority:
        """Create a fresh P-256 root in `directory`; refuses to replace an existing one unless forced."""
        check_trust_domain(trust_domain)
        with _locked(directory):
            if not force and _has_ca(directory):
                raise CaExists(directory)
            return cls._create(directory, trust_domain, time.time() if now is None else now)

    @classmethod
    def _create(cls, directory: Path, trust_domain: str, now: float) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed_root(key, trust_domain, now)
        ca = cls(cert, key, trust_domain=trust_domain, directory=directory)
        ca._save()
        return ca

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        bundle_pem: bytes | None = None,
        what: str = "CA",
    ) -> CertificateAuthority:
        """An operator's CA: `cert_pem` is the signing cert (plus its chain), `bundle_pem` the roots
        peers trust (default: the signing cert itself)."""
        certs = load_pem_certs(cert_pem, what=f"{what} certificate")
        key = _load_key(key_pem, what=f"{what} key")
        _check_is_ca(certs[0], key, what=what)
        if bundle_pem is not None:
            load_pem_certs(bundle_pem, what=f"{what} trust bundle")
        chain = b"".join(c.public_bytes(_PEM) for c in certs[1:])
        return cls(certs[0], key, trust_domain=trust_domain, chain_pem=chain, roots_pem=bundle_pem)

    @classmethod
    def import_pem(
        cls,
        directory: Path,
        cert_pem: bytes,
        key_pem: bytes,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        bundle_pem: bytes | None = None,
        force: bool = False,
    ) -> CertificateAuthority:
        """Store an operator's CA in `directory` so later `load` calls use it."""
        ca = cls.from_pem(cert_pem, key_pem, trust_domain=trust_domain, bundle_pem=bundle_pem)
        with _locked(directory):
            if not force and _has_ca(directory):
                raise CaExists(directory)
            ca.directory = directory
            ca._save()
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load the CA kept in `directory`."""
        if not _has_ca(directory):
            raise CaNotFound(directory)
        try:
            cert_pem = (directory / "ca.pem").read_bytes()
            key_pem = (directory / "ca.key").read_bytes()
            bundle = directory / "bundle.pem"
            bundle_pem = bundle.read_bytes() if bundle.exists() else None
            td_file = directory / "trust-domain"
            td = td_file.read_text().strip() if td_file.exists() else DEFAULT_TRUST_DOMAIN
        except OSError as exc:
            raise CaInvalid(f"{exc.filename}: {exc.strerror}") from None
        ca = cls.from_pem(
            cert_pem, key_pem, trust_domain=td, bundle_pem=bundle_pem, what=str(directory)
        )
        ca.directory = directory
        return ca

    @classmethod
    def load_or_init(
        cls, directory: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> CertificateAuthority:
        """The node's default: use the CA in `directory`, creating it on first use."""
        check_trust_domain(trust_domain)
        with _locked(directory):
            if not _has_ca(directory):
                return cls._create(directory, trust_domain, time.time())
        ca = cls.load(directory)
        if ca.trust_domain != trust_domain:
            raise CaInvalid(
                f"{directory}: trust domain: got {ca.trust_domain!r} on disk, expected "
                f"{trust_domain!r}"
            )
        return ca

    def _save(self) -> None:
        assert self.directory is not None
        d = self.directory
        write_atomic(d / "ca.key", _key_pem(self.key), KEY_MODE)
        write_atomic(d / "ca.pem", self.cert.public_bytes(_PEM) + self.chain_pem)
        write_atomic(d / "bundle.pem", self.roots_pem)
        write_atomic(d / "trust-domain", f"{self.trust_domain}\n".encode())
        write_atomic(d / "issued.jsonl", b"")  # a new CA has issued nothing yet

    # --- issuing ------------------------------------------------------------------------------

    def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = DEFAULT_LEAF_LIFETIME
    ) -> WorkloadCert:
        """A fresh P-256 key and leaf: empty subject, one URI SAN, EKU server+client auth."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self.sign(identity, key.public_key(), now=now, lifetime=lifetime)
        return WorkloadCert(
            identity=identity,
            cert_pem=leaf.public_bytes(_PEM),
            key_pem=_key_pem(key),
            chain_pem=self._leaf_chain,
            roots_pem=self.roots_pem,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )

    def sign(
        self,
        identity: SpiffeId,
        public_key: ec.EllipticCurvePublicKey,
        *,
        now: float,
        lifetime: float = DEFAULT_LEAF_LIFETIME,
    ) -> x509.Certificate:
        """A leaf for a key someone else holds (the fleet signer: the key never left its node)."""
        if identity.trust_domain != self.trust_domain:
            raise WrongTrustDomain(identity, self.trust_domain)
        not_before = float(int(now))
        not_after = min(not_before + int(lifetime), self.cert.not_valid_after_utc.timestamp())
        leaf = self._leaf(identity, public_key, not_before, not_after)
        self._record(leaf, identity)
        return leaf

    @property
    def leaf_chain_pem(self) -> bytes:
        """What follows each leaf in a chain: the signing cert and its intermediates when the roots
        peers trust are not the signing cert itself, else nothing."""
        return self._leaf_chain

    def _leaf(
        self, identity: SpiffeId, public_key: ec.EllipticCurvePublicKey, nb: float, na: float
    ) -> x509.Certificate:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        # RFC 5280 §4.2.1.6: "If the subject field contains an empty sequence, then the issuing CA
        # MUST include a subjectAltName extension that is marked as critical."
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))])
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(nb))
            .not_valid_after(_utc(na))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(san, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(aki, critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _record(self, leaf: x509.Certificate, identity: SpiffeId) -> None:
        if self.directory is None:
            return
        line = json.dumps(
            {
                "identity": str(identity),
                "serial": f"{leaf.serial_number:x}",
                "not_before": leaf.not_valid_before_utc.timestamp(),
                "not_after": leaf.not_valid_after_utc.timestamp(),
                "fingerprint": fingerprint(leaf.public_bytes(_DER)),
            }
        )
        # One write() on an O_APPEND descriptor: concurrent issuers never interleave lines. The log
        # only feeds `zt ca show` ("issued identities when known"): failing to write it must not
        # fail the issuance.
        path = self.directory / "issued.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not record issued certificate in %s: %s", path, exc.strerror)

    # --- inspection ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert.public_bytes(_DER))

    def issued(self) -> list[IssuedRecord]:
        """The issued.jsonl log (empty for an in-memory CA); malformed lines are skipped."""
        if self.directory is None:
            return []
        path = self.directory / "issued.jsonl"
        if not path.exists():
            return []
        out: list[IssuedRecord] = []
        for raw in path.read_text().splitlines():
            try:
                out.append(IssuedRecord(**json.loads(raw)))
            except (ValueError, TypeError):
                continue
        return out


def _has_ca(directory: Path) -> bool:
    return (directory / "ca.pem").exists() or (directory / "ca.key").exists()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize CA creation between processes (two nodes' first start on one host)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CaInvalid(f"{directory}: cannot create the CA directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load_key(key_pem: bytes, *, what: str) -> CaKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CaInvalid(f"{what}: expected an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaInvalid(f"{what}: got a {type(key).__name__}, expected an EC or RSA key")
    return key


def _check_is_ca(cert: x509.Certificate, key: CaKey, *, what: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CaInvalid(f"{what}: certificate {cert.subject.rfc4514_string()!r} is not a CA")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(_DER, spki) != cert.public_key().public_bytes(_DER, spki):
        raise CaInvalid(f"{what}: the private key does not match the CA certificate")
