"""The kTLS tier: zt's HBONE with OpenSSL handing record encryption to the kernel (zt/proxy/ktls.py).

It needs a kernel with the `tls` ULP. The VM lab (vagrant/README.md) runs it on Debian's 6.1 and
6.12 kernels with ZT_REQUIRE_KTLS=1: there a missing ULP fails every test. Elsewhere (a host
kernel without CONFIG_TLS) each test is skipped with the reason the probe gave, by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy.helpers import Pki
from zt.proxy import ktls

REQUIRED = os.environ.get("ZT_REQUIRE_KTLS") == "1"


@pytest.fixture(autouse=True)
def ktls_kernel() -> None:
    status = ktls.status(load=True)  # the tier may load the tls module: it is what it tests
    if status.available:
        return
    message = f"kTLS tier: this machine cannot offload TLS ({status.reason})"
    if REQUIRED:
        pytest.fail(f"{message}; ZT_REQUIRE_KTLS=1 forbids skipping", pytrace=False)
    pytest.skip(f"{message}; the VM lab runs this tier (make vm-test)")


@pytest.fixture
def ktls_on(ktls_kernel: None) -> Iterator[None]:
    """kTLS asked for on every connection this test makes (`zt run --ktls on`), then off."""
    ktls.configure("on")
    try:
        yield
    finally:
        ktls.configure("off")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory: Path = tmp_path_factory.mktemp("mesh-ca")
    return Pki.create(directory)
