"""Fixtures for the loopback TLS tests."""

from __future__ import annotations

import time

import pytest

from tests.identity.pki import Pki
from zt.identity.ca import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.init(d / "mesh")
    other = CertificateAuthority.init(d / "other")
    # "right CA but foreign trust domain": the mesh's own root signing for other.td
    foreign = CertificateAuthority.from_pem(
        (d / "mesh" / "ca.pem").read_bytes(),
        (d / "mesh" / "ca.key").read_bytes(),
        trust_domain="other.td",
    )
    return Pki(ca=ca, other_ca=other, foreign_td=foreign, now=time.time(), directory=d)
