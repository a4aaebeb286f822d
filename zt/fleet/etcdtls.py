"""TLS material for etcd members: an etcd-only P-256 CA with one server and one peer certificate
(used by zt/fleet/etcdserver.py for the lab and the tests)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zt.identity._files import KEY_MODE, write_atomic


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class EtcdTls:
    """Files of an etcd-only CA: one server cert (clients) and one peer cert (members)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def peer_cert(self) -> Path:
        return self.directory / "peer.pem"

    @property
    def peer_key(self) -> Path:
        return self.directory / "peer.key"

    @classmethod
    def create(cls, directory: Path, hosts: list[str]) -> EtcdTls:
        """A fresh P-256 CA and server + peer certs valid for `hosts` (IPs or DNS names)."""
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("zt etcd CA"))
            .issuer_name(_name("zt etcd CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        tls = cls(directory)
        write_atomic(tls.ca, ca.public_bytes(serialization.Encoding.PEM))
        for cn, cert_path, key_path in (
            ("etcd server", tls.server_cert, tls.server_key),
            ("etcd peer", tls.peer_cert, tls.peer_key),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(_name(cn))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=825))
                .add_extension(_san(hosts), critical=False)
                .add_extension(
                    # peers are both servers and clients of each other
                    x509.ExtendedKeyUsage(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    ),
                    critical=False,
                )
                .sign(ca_key, hashes.SHA256())
            )
            write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
            # 0600 from creation on, also when an older (maybe wider) key file is replaced
            write_atomic(key_path, _key_pem(key), KEY_MODE)
        return tls
