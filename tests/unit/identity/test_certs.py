"""WorkloadCert files: what `write` puts on disk and what `read`/`from_pem` accept."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateFileError
from zt.identity.spiffe import SpiffeId

NOW = 1_900_000_000.0
ID = SpiffeId("cluster.local", "ns1", "sa1")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca", now=NOW)


def test_write_read_roundtrip(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert = ca.issue(ID, now=NOW)
    pem, key, bundle = cert.write(tmp_path / "w")
    assert (pem.name, key.name, bundle.name) == ("w.pem", "w.key", "w-bundle.pem")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pem.read_bytes() == cert.cert_pem
    assert bundle.read_bytes() == ca.roots_pem
    assert WorkloadCert.read(tmp_path / "w") == cert


def test_write_narrows_an_existing_world_readable_key(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    (tmp_path / "w.key").write_bytes(b"old")
    (tmp_path / "w.key").chmod(0o644)
    ca.issue(ID, now=NOW).write(tmp_path / "w")
    assert stat.S_IMODE((tmp_path / "w.key").stat().st_mode) == 0o600


def test_validity_helpers(ca: CertificateAuthority) -> None:
    cert = ca.issue(ID, now=NOW, lifetime=100)
    assert cert.lifetime == 100
    assert cert.renew_at == NOW + 50
    assert cert.valid_at(NOW) and cert.valid_at(NOW + 99.9)
    assert not cert.valid_at(NOW - 1) and not cert.valid_at(NOW + 100)


def test_from_pem_rejects_mismatched_key(ca: CertificateAuthority) -> None:
    a = ca.issue(ID, now=NOW)
    b = ca.issue(ID, now=NOW)
    with pytest.raises(CertificateFileError, match="the private key does not match"):
        WorkloadCert.from_pem(a.cert_pem, b.key_pem, a.roots_pem)


def test_from_pem_requires_one_spiffe_san(tmp_path: Path, ca: CertificateAuthority) -> None:
    # the CA certificate itself has no URI SAN
    with pytest.raises(CertificateFileError, match="expected exactly one SPIFFE URI SAN, got"):
        WorkloadCert.from_pem(ca.roots_pem, b"", ca.roots_pem)


def test_read_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError, match=r"nothere\.pem: No such file"):
        WorkloadCert.read(tmp_path / "nothere")


def test_is_frozen(ca: CertificateAuthority) -> None:
    cert = ca.issue(ID, now=NOW)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cert.not_after = 0  # type: ignore[misc]
