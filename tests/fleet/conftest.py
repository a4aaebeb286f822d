"""Fleet fixtures: real etcd clusters, one per module (tests/fleet/etcdfix.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet.etcdfix import etcd_cluster, unique_prefix
from zt.fleet.etcdserver import EtcdCluster


@pytest.fixture(scope="module")
def etcd1() -> Iterator[EtcdCluster]:
    """One plaintext member, no auth."""
    with etcd_cluster(1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def _etcd3_module() -> Iterator[EtcdCluster]:
    with etcd_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def etcd3(_etcd3_module: EtcdCluster) -> EtcdCluster:
    """Three plaintext members, no auth; every member running and thawed at the start of a test
    (tests may kill, stop or freeze members)."""
    _etcd3_module.heal()
    return _etcd3_module


@pytest.fixture(scope="module")
def etcd_tls_auth() -> Iterator[EtcdCluster]:
    """One member with TLS (cluster.tls.ca) and auth on; root's password is
    cluster.root_password (tests.fleet.etcdfix.ROOT_PASSWORD); cluster.client() is root."""
    with etcd_cluster(1, tls=True, auth=True) as cluster:
        yield cluster


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> bytes:
    """A key prefix no other test uses, e.g. b"/t3-test_put/"."""
    return unique_prefix(request.node.name.split("[")[0])
