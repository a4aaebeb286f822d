"""Test PKI: a mesh CA, a second unrelated CA, and the mesh CA signing for another trust domain."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId

SERVER = SpiffeId("cluster.local", "shop", "server")
CLIENT = SpiffeId("cluster.local", "shop", "client")
FOREIGN = SpiffeId("other.td", "shop", "client")


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    foreign_td: CertificateAuthority
    now: float
    directory: Path

    def issue(
        self, identity: SpiffeId, *, ca: CertificateAuthority | None = None, offset: float = 0.0
    ) -> WorkloadCert:
        return (ca or self.ca).issue(identity, now=self.now + offset)

    def files(self, cert: WorkloadCert, name: str) -> dict[str, Path]:
        pem, key, bundle = cert.write(self.directory / name)
        return {"cert": pem, "key": key, "bundle": bundle}


def operator_intermediate(now: float, trust_domain: str) -> CertificateAuthority:
    """An operator's PKI: a P-384 root they keep offline, and a P-256 intermediate zt signs with.
    Peers trust only the root, so every leaf must travel with the intermediate."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator root")])
    start = dt.datetime.fromtimestamp(now - 3600, tz=dt.UTC)

    def ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256())
        )

    root = ca_cert(root_name, root_key)
    inter = ca_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zt node")]), inter_key)
    pem = serialization.Encoding.PEM
    return CertificateAuthority.from_pem(
        inter.public_bytes(pem),
        inter_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        trust_domain=trust_domain,
        bundle_pem=root.public_bytes(pem),
    )
