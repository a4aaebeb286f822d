"""Certificates for the Envoy interop tests.

* mesh CA, trust domain cluster.local: the server and client workloads;
* rogue CA, same trust domain, trusted by nobody: "wrong CA";
* foreign CA, trust domain other.td, whose root *is* in every bundle: the chain verifies, so only
  the SPIFFE trust-domain check can refuse it ("foreign trust domain").
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pluggy
import pytest

from tests.interop import envoy
from tests.interop.envoy import TlsFiles
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId

TD = "cluster.local"
SERVER_ID = SpiffeId(TD, "default", "server")
CLIENT_ID = SpiffeId(TD, "default", "client")


@dataclass(frozen=True)
class InteropPki:
    directory: Path
    bundle: bytes  # mesh + foreign roots
    server: WorkloadCert
    client: WorkloadCert
    rogue_client: WorkloadCert
    foreign_client: WorkloadCert

    def files(self, cert: WorkloadCert, name: str) -> TlsFiles:
        pem, key, bundle = cert.write(self.directory / name)
        return TlsFiles(cert=pem, key=key, ca=bundle)


def _with_bundle(cert: WorkloadCert, bundle: bytes) -> WorkloadCert:
    return WorkloadCert.from_pem(cert.cert_pem + cert.chain_pem, cert.key_pem, bundle)


@pytest.fixture(scope="session")
def interop_pki(tmp_path_factory: pytest.TempPathFactory) -> InteropPki:
    root = tmp_path_factory.mktemp("interop-pki")
    now = time.time()
    mesh = CertificateAuthority.init(root / "mesh", TD)
    rogue = CertificateAuthority.init(root / "rogue", TD)
    foreign = CertificateAuthority.init(root / "foreign", "other.td")
    bundle = mesh.roots_pem + foreign.roots_pem
    return InteropPki(
        directory=root,
        bundle=bundle,
        server=_with_bundle(mesh.issue(SERVER_ID, now=now), bundle),
        client=_with_bundle(mesh.issue(CLIENT_ID, now=now), bundle),
        rogue_client=_with_bundle(rogue.issue(CLIENT_ID, now=now), bundle),
        foreign_client=_with_bundle(
            foreign.issue(SpiffeId("other.td", "default", "client"), now=now), bundle
        ),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def envoy_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Show the tail of every running Envoy's log (`-l warning`) under a failed test."""
    yield
    if request.node.stash.get(_FAILED, False):
        for running in envoy.RUNNING:
            print(f"--- envoy pid {running.proc.pid} log ---\n{running.log_text()[-4000:]}")
