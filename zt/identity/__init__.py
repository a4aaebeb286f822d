"""Identity: SPIFFE ids, the embedded CA, the per-node certificate manager and the mTLS contexts
HBONE uses (docs/design.md §2, §3)."""

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.manager import CertificateManager, CertificateSource
from zt.identity.sources import StaticCertificateSource
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import (
    client_context,
    server_context,
    verify_client_peer,
    verify_server_peer,
)

__all__ = [
    "CertificateAuthority",
    "CertificateManager",
    "CertificateSource",
    "SpiffeId",
    "StaticCertificateSource",
    "WorkloadCert",
    "client_context",
    "server_context",
    "verify_client_peer",
    "verify_server_peer",
]
