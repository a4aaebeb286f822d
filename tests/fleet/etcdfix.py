"""Real etcd members for the fleet tests (Debian's /usr/bin/etcd 3.4), never a fake.

Fixtures (tests/fleet/conftest.py) hand out `EtcdCluster` objects (zt/fleet/etcdserver.py):
`cluster.client()` is an EtcdClient on every member (as root on `etcd_tls_auth`),
`cluster.client(user=..., password=...)` another user. Module-scoped clusters are shared by the tests
of a module: give each test its own key prefix (the `etcd_prefix` fixture).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from zt.fleet.etcdserver import EtcdCluster, bootstrap_auth

ROOT_PASSWORD = "zt-test-root-pw"
T = TypeVar("T")
_prefixes = itertools.count()


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run one async test body with a deadline (no pytest-asyncio in this suite)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def unique_prefix(name: str) -> bytes:
    return f"/t{next(_prefixes)}-{name}/".encode()


@contextmanager
def etcd_cluster(size: int, *, tls: bool = False, auth: bool = False) -> Iterator[EtcdCluster]:
    """Started members, removed (processes and data dirs) however the block ends."""
    cluster = EtcdCluster.start(size=size, tls=tls)
    try:
        if auth:
            run(_bootstrap(cluster))
            cluster.root_password = ROOT_PASSWORD
        yield cluster
    finally:
        cluster.close()


async def _bootstrap(cluster: EtcdCluster) -> None:
    async with cluster.client(user="root", password=ROOT_PASSWORD) as client:
        await bootstrap_auth(client, ROOT_PASSWORD)
