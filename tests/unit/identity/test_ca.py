"""The embedded CA: state directory, refusal to overwrite, operator CAs, and the leaves it issues."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import (
    CaExists,
    CaInvalid,
    CaNotFound,
    CertificateFileError,
    InvalidTrustDomain,
    WrongTrustDomain,
)
from zt.identity.spiffe import SpiffeId

NOW = 1_900_000_000.0
ID = SpiffeId("cluster.local", "bookinfo", "reviews")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_state_with_private_modes(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, "mesh.example", now=NOW)
    assert _mode(d) == 0o700
    assert _mode(d / "ca.key") == 0o600
    assert (d / "trust-domain").read_text() == "mesh.example\n"
    assert (d / "bundle.pem").read_bytes() == (d / "ca.pem").read_bytes() == ca.roots_pem
    root = x509.load_pem_x509_certificate(ca.roots_pem)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - root.not_valid_before_utc > dt.timedelta(days=5 * 365)
    assert ca.trust_domain == "mesh.example"


def test_init_refuses_existing_ca_unless_forced(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    first = CertificateAuthority.init(d, now=NOW)
    with pytest.raises(CaExists, match=f"a CA already exists in {d}; pass --force") as err:
        CertificateAuthority.init(d, now=NOW)
    assert err.value.exit_code == 2
    assert (d / "ca.pem").read_bytes() == first.roots_pem  # untouched
    second = CertificateAuthority.init(d, force=True, now=NOW)
    assert second.fingerprint != first.fingerprint
    assert CertificateAuthority.load(d).fingerprint == second.fingerprint


def test_init_rejects_bad_trust_domain_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(InvalidTrustDomain, match="got 'Not Valid'"):
        CertificateAuthority.init(tmp_path / "ca", "Not Valid")
    assert not (tmp_path / "ca").exists()


def test_load_and_load_or_init(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    with pytest.raises(CaNotFound, match=f"no CA in {d}"):
        CertificateAuthority.load(d)
    created = CertificateAuthority.load_or_init(d)
    again = CertificateAuthority.load_or_init(d)
    assert again.fingerprint == created.fingerprint
    assert again.trust_domain == "cluster.local"
    with pytest.raises(
        CaInvalid, match=r"trust domain: got 'cluster\.local' on disk, expected 'x\.y'"
    ):
        CertificateAuthority.load_or_init(d, "x.y")


def test_load_or_init_concurrent_creates_one_ca(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    out: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: out.append(CertificateAuthority.load_or_init(d).fingerprint)
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(out) == 8
    assert len(set(out)) == 1


def test_load_rejects_mismatched_key(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    CertificateAuthority.init(a, now=NOW)
    CertificateAuthority.init(b, now=NOW)
    (a / "ca.key").write_bytes((b / "ca.key").read_bytes())
    with pytest.raises(CaInvalid, match="the private key does not match the CA certificate"):
        CertificateAuthority.load(a)
    (a / "ca.key").write_bytes(b"garbage")
    with pytest.raises(CaInvalid, match="expected an unencrypted PEM private key"):
        CertificateAuthority.load(a)


def test_leaf_shape(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    cert = ca.issue(ID, now=NOW + 0.7)
    leaf = x509.load_pem_x509_certificate(cert.cert_pem)
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == x509.load_pem_x509_certificate(ca.roots_pem).subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280 §4.2.1.6, empty subject
    assert list(san.value) == [x509.UniformResourceIdentifier(str(ID))]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc.timestamp() == cert.not_before == NOW
    assert cert.not_after - cert.not_before == 86400
    assert cert.renew_at == NOW + 43200
    key = serialization.load_pem_private_key(cert.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert cert.chain_pem == b""
    assert cert.roots_pem == ca.roots_pem
    # a fresh key per issuance
    assert ca.issue(ID, now=NOW).key_pem != cert.key_pem


def test_openssl_x509_text_on_issued_leaf(tmp_path: Path) -> None:
    """The CA's acceptance check, read by OpenSSL itself."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    now = time.time()
    cert_path, _, bundle = ca.issue(ID, now=now).write(tmp_path / "leaf")
    text = subprocess.run(
        ["openssl", "x509", "-text", "-noout", "-in", str(cert_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "ASN1 OID: prime256v1" in text
    assert "NIST CURVE: P-256" in text
    assert text.count("URI:") == 1
    assert f"URI:{ID}" in text
    assert "DNS:" not in text and "IP Address:" not in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "        Subject: \n" in text or "        Subject: " + "\n" in text
    start = next(line for line in text.splitlines() if "Not Before" in line).split(": ", 1)[1]
    end = next(line for line in text.splitlines() if "Not After" in line).split(": ", 1)[1]
    fmt = "%b %d %H:%M:%S %Y GMT"
    span = dt.datetime.strptime(end.replace("  ", " "), fmt) - dt.datetime.strptime(
        start.replace("  ", " "), fmt
    )
    assert span == dt.timedelta(hours=24)
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), "-purpose", "sslclient", str(cert_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stderr
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), "-purpose", "sslserver", str(cert_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stderr


def test_issue_refuses_foreign_trust_domain(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    with pytest.raises(WrongTrustDomain, match="got 'spiffe://other/ns/a/sa/b', expected one in"):
        ca.issue(SpiffeId("other", "a", "b"), now=NOW)


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    ca_end = ca.cert.not_valid_after_utc.timestamp()
    cert = ca.issue(ID, now=ca_end - 100, lifetime=86400)
    assert cert.not_after == ca_end


def test_issued_log_and_show_data(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, now=NOW)
    a = ca.issue(ID, now=NOW)
    ca.issue(SpiffeId("cluster.local", "x", "y"), now=NOW + 10)
    lines = [json.loads(x) for x in (d / "issued.jsonl").read_text().splitlines()]
    assert [x["identity"] for x in lines] == [str(ID), "spiffe://cluster.local/ns/x/sa/y"]
    assert lines[0]["not_after"] == NOW + 86400
    assert lines[0]["fingerprint"] == a.fingerprint
    records = CertificateAuthority.load(d).issued()
    assert [r.identity for r in records] == [str(ID), "spiffe://cluster.local/ns/x/sa/y"]
    # forcing a new CA starts a new log: the old leaves are not this CA's
    CertificateAuthority.init(d, force=True, now=NOW)
    assert CertificateAuthority.load(d).issued() == []
    # an in-memory CA keeps no log
    mem = CertificateAuthority.from_pem((d / "ca.pem").read_bytes(), (d / "ca.key").read_bytes())
    mem.issue(ID, now=NOW)
    assert mem.issued() == []
    assert CertificateAuthority.load(d).issued() == []


def _operator_pki(now: float) -> tuple[bytes, bytes, bytes]:
    """An operator's root and an intermediate that zt signs with: (intermediate, its key, root)."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator root")])
    inter_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator intermediate")])
    start = dt.datetime.fromtimestamp(now - 3600, tz=dt.UTC)
    end = start + dt.timedelta(days=365)

    def build(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )

    root = build(root_name, root_key).sign(root_key, hashes.SHA256())
    inter = build(inter_name, inter_key).sign(root_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = inter_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return inter.public_bytes(pem), key_pem, root.public_bytes(pem)


def test_operator_intermediate_ca(tmp_path: Path) -> None:
    now = time.time()
    inter, key, root = _operator_pki(now)
    d = tmp_path / "ca"
    CertificateAuthority.import_pem(d, inter, key, trust_domain="corp.example", bundle_pem=root)
    with pytest.raises(CaExists):
        CertificateAuthority.import_pem(d, inter, key, bundle_pem=root)
    ca = CertificateAuthority.load(d)
    assert ca.trust_domain == "corp.example"
    assert ca.roots_pem == root
    cert = ca.issue(SpiffeId("corp.example", "a", "b"), now=now)
    assert cert.chain_pem == inter  # peers trusting only the root need the intermediate
    paths = cert.write(tmp_path / "w")
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(paths[2]), "-untrusted", str(paths[0]), str(paths[0])],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    back = WorkloadCert.read(tmp_path / "w")
    assert back.chain_pem == inter
    assert back.identity == cert.identity


def test_from_pem_refuses_a_leaf_as_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    leaf = ca.issue(ID, now=NOW)
    with pytest.raises(CaInvalid, match="is not a CA"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(CertificateFileError, match="CA certificate: expected PEM certificates"):
        CertificateAuthority.from_pem(b"nope", leaf.key_pem)


def test_unwritable_issued_log_does_not_fail_issuance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, now=NOW)
    (d / "issued.jsonl").unlink()
    (d / "issued.jsonl").mkdir()  # any write now fails with EISDIR
    with caplog.at_level("WARNING", logger="zt.identity.ca"):
        cert = ca.issue(ID, now=NOW)
    assert cert.identity == ID
    assert any("could not record issued certificate" in r.getMessage() for r in caplog.records)
