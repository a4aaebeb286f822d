"""Certificate sources for operators who bring their own PKI: pre-issued files plus a trust bundle.

A directory holds, per workload, the three files `zt ca issue` writes: PREFIX.pem (leaf + chain),
PREFIX.key, PREFIX-bundle.pem (optional when a shared bundle is given). The identity is read from
each leaf's URI SAN; the directory is re-read on every `issue`, so an operator's rotation is picked up
at the next renewal.
"""

from __future__ import annotations

from pathlib import Path

from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateFileError, CertificateUnavailable
from zt.identity.manager import DEFAULT_LIFETIME
from zt.identity.spiffe import SpiffeId


class StaticCertificateSource:
    """Serves pre-issued certificates from `directory`; never signs anything."""

    def __init__(self, directory: Path, *, bundle: Path | None = None) -> None:
        self.directory = directory
        self.bundle = bundle

    def _roots(self, prefix: Path) -> bytes:
        path = self.bundle or prefix.with_name(prefix.name + "-bundle.pem")
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CertificateFileError(f"trust bundle {path}: {exc.strerror}") from None

    def load_all(self) -> dict[SpiffeId, WorkloadCert]:
        """Every readable certificate in the directory, by identity (the newest wins on duplicates)."""
        found: dict[SpiffeId, WorkloadCert] = {}
        for key in sorted(self.directory.glob("*.key")):
            prefix = key.with_suffix("")
            cert_path = prefix.with_name(prefix.name + ".pem")
            try:
                cert_pem, key_pem = cert_path.read_bytes(), key.read_bytes()
            except OSError as exc:
                raise CertificateFileError(f"{exc.filename}: {exc.strerror}") from None
            cert = WorkloadCert.from_pem(
                cert_pem, key_pem, self._roots(prefix), what=str(cert_path)
            )
            old = found.get(cert.identity)
            if old is None or cert.not_after > old.not_after:
                found[cert.identity] = cert
        return found

    def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = DEFAULT_LIFETIME
    ) -> WorkloadCert:
        """The pre-issued certificate for `identity` valid at `now` (`lifetime` is the issuer's)."""
        del lifetime  # pre-issued: the operator's CA chose it
        cert = self.load_all().get(identity)
        if cert is None:
            raise CertificateUnavailable(f"no certificate for {identity} in {self.directory}")
        if not cert.valid_at(now):
            raise CertificateUnavailable(
                f"certificate for {identity} in {self.directory} is not valid now "
                f"(valid {cert.not_before:.0f}..{cert.not_after:.0f}, now {now:.0f})"
            )
        return cert
