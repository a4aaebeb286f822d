"""EtcdMeshSource on real etcd members: updates, refusals, compaction, outages, leader loss."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from tests.fleet.etcdfix import run
from zt.config.loader import load_file
from zt.config.watcher import ReloadFailure, SnapshotStore
from zt.fleet import acl, keys, push
from zt.fleet.etcd import EtcdClient, KeyValue, WatchEvent
from zt.fleet.etcderrors import EtcdUnavailable
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.meshwatch import EtcdMeshSource
from zt.fleet.push import MeshText
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry

EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh.yaml"
TEXT = EXAMPLE.read_text()
_n = itertools.count()
ERRORS = "zt_config_object_errors_total"


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefix() -> str:
    return f"/h2watch{next(_n)}"


def account(store: SnapshotStore, uid: str = "default/pod-a1") -> str:
    return store.current.by_uid[uid].service_account


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until check() holds (AssertionError naming `what` after `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@asynccontextmanager
async def watching(
    cluster: EtcdCluster, p: str, **kwargs: object
) -> AsyncIterator[tuple[EtcdMeshSource, SnapshotStore, Registry]]:
    registry = Registry()
    source = EtcdMeshSource(cluster.client, p, registry=registry, **kwargs)  # type: ignore[arg-type]
    store = SnapshotStore(await source.initial(5.0))
    source.attach(store)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: source.synced, 5.0, "synced")
        yield source, store, registry
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_push_reaches_the_store_and_a_bad_object_is_refused(
    etcd1: EtcdCluster, tmp_path: Path
) -> None:
    p, cache = prefix(), tmp_path / "mesh.json"

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            async with watching(etcd1, p, cache=cache) as (source, store, registry):
                assert account(store) == "frontend" and source.synced
                assert load_file(cache).by_uid.keys() == store.current.by_uid.keys()
                await push.push(client, p, MeshText(TEXT.replace("frontend", "fe")))
                took = await until(lambda: account(store) == "fe", 1.0, "push applied")
                assert store.generation == 2, took
                assert source.revision == (await client.range(b"/", b"\0", limit=1))[1]
                assert load_file(cache).by_uid["default/pod-a1"].service_account == "fe"
                assert registry.value("zt_config_synced") == 1
                assert registry.value("zt_config_revision") == source.revision
                assert "zt_config_snapshot_age_seconds 0" in registry.render()

                key = keys.workload_key(p, "default/pod-a1")
                current = await client.get(key)
                assert current is not None
                await client.put(key, current.value.replace(b'"10.1.0.2"', b'"x"'))
                await until(lambda: store.last_error is not None, 1.0, "refusal")
                assert store.last_error is not None
                assert f"{key.decode()}: workloadIps[0]: got 'x'" in store.last_error.message
                assert store.last_error.reason == "etcd_bad_object"
                assert account(store) == "fe" and store.generation == 2  # last good kept
                assert registry.value(ERRORS, reason="etcd_bad_object") == 1
                assert load_file(cache).by_uid["default/pod-a1"].service_account == "fe"

                await client.put(key, current.value)  # fixed: accepted again
                await until(lambda: store.last_error is None, 1.0, "fixed object accepted")

    run(body())


def test_compaction_past_the_source_revision_lists_again(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            registry = Registry()
            source = EtcdMeshSource(etcd1.client, p, registry=registry, backoff=(0.05, 0.1))
            store = SnapshotStore(await source.initial(5.0))
            source.attach(store)
            stale = source.revision
            # the node is away while the mesh changes and etcd compacts its history
            await push.push(client, p, MeshText(TEXT.replace("frontend", "fa")))
            result = await push.push(client, p, MeshText(TEXT.replace("frontend", "fb")))
            await client.compact(result.revision)
            task = asyncio.create_task(source.run())
            try:
                await until(lambda: account(store) == "fb", 3.0, "re-listed")
                assert source.revision >= result.revision > stale
                assert store.generation == 2  # one swap: straight to the current mesh
                await push.push(client, p, MeshText(TEXT.replace("frontend", "fc")))
                await until(lambda: account(store) == "fc", 1.0, "watching again")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(body())


@contextmanager
def down(cluster: EtcdCluster) -> Iterator[None]:
    member = cluster.members[0]
    cluster.stop(member)
    try:
        yield
    finally:
        if not member.running:
            cluster.restart(member)


def test_etcd_down_keeps_serving_ages_and_resumes(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            async with watching(etcd1, p, backoff=(0.2, 0.4)) as (source, store, registry):
                with down(etcd1):
                    await until(lambda: not source.synced, 4.0, "unsynced")
                    assert registry.value("zt_config_synced") == 0
                    first = source.age_seconds()
                    await asyncio.sleep(0.3)
                    assert source.age_seconds() >= first + 0.25
                    age = re.search(
                        r"^zt_config_snapshot_age_seconds (\S+)$", registry.render(), re.M
                    )
                    assert age is not None and float(age.group(1)) >= 0.25
                    described = source.describe()
                    assert described is not None and "not synced with etcd" in described
                    status = source.status()
                    assert status["synced"] is False and status["last_error"]
                    assert account(store) == "frontend"  # still serving
                    await asyncio.to_thread(etcd1.restart, etcd1.members[0])
                    # pushed before the source's next attempt (its backoff is running)
                    await push.push(client, p, MeshText(TEXT.replace("frontend", "fd")))
                    await until(lambda: account(store) == "fd", 5.0, "push made while away")
                await until(lambda: source.synced, 2.0, "synced again")
                assert source.age_seconds() == 0 and source.describe() is None

    run(body(), timeout=30)


def test_killing_the_leader_mid_watch_loses_no_update(etcd3: EtcdCluster) -> None:
    """The source watches the leader itself (its first endpoint), which is SIGKILLed."""
    p = prefix()
    leader = etcd3.leader()
    first = [leader.client_url, *(e for e in etcd3.endpoints if e != leader.client_url)]

    async def body() -> None:
        async with etcd3.client() as client:
            await push.push(client, p, EXAMPLE)
            registry = Registry()
            source = EtcdMeshSource(
                lambda: EtcdClient(first, timeout=2.0, first=0),
                p,
                registry=registry,
                backoff=(0.1, 0.5),
            )
            store = SnapshotStore(await source.initial(5.0))
            source.attach(store)
            task = asyncio.create_task(source.run())
            try:
                await until(lambda: source.synced, 5.0, "synced")
                assert source.status()["endpoint"] == leader.client_url
                await asyncio.to_thread(etcd3.kill, leader)
                start = time.monotonic()
                for name in ("k1", "k2", "k3"):
                    await push.push(client, p, MeshText(TEXT.replace("frontend", name)))
                    await until(lambda n=name: account(store) == n, 6.0, f"push {name}")  # type: ignore[misc]
                assert source.status()["endpoint"] != leader.client_url
                assert time.monotonic() - start < 6.0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(body(), timeout=30)


def test_start_up_from_the_cache_when_etcd_is_unreachable(
    etcd1: EtcdCluster, tmp_path: Path
) -> None:
    p, cache = prefix(), tmp_path / "mesh.json"
    nowhere = [f"http://127.0.0.1:{closed_port()}"]

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
        warm = EtcdMeshSource(etcd1.client, p, registry=Registry(), cache=cache)
        await warm.initial(5.0)
        await (await asyncio.to_thread(lambda: warm.client)).close()

        def unreachable() -> EtcdClient:
            return EtcdClient(nowhere, timeout=0.5)

        cold = EtcdMeshSource(unreachable, p, registry=Registry(), cache=cache)
        snapshot = await cold.initial(2.0)
        assert account_of(snapshot) == "frontend"
        assert not cold.synced and cold.age_seconds() >= 0
        assert cold.status()["last_error"]
        await cold.client.close()

        bare = EtcdMeshSource(unreachable, p, registry=Registry(), cache=tmp_path / "none.json")
        with pytest.raises(EtcdUnavailable):
            await bare.initial(2.0)
        await bare.client.close()

    run(body())


def account_of(snapshot: Snapshot) -> str:
    return snapshot.by_uid["default/pod-a1"].service_account


def test_a_node_user_over_tls_needs_only_read_on_the_mesh(etcd_tls_auth: EtcdCluster) -> None:
    """The node's etcd role (zt/fleet/acl.py) reads {p}/mesh/ and nothing else of it."""
    p, cluster = prefix(), etcd_tls_auth

    async def body() -> None:
        async with cluster.client(user="root", password=cluster.root_password) as root:
            await push.push(root, p, EXAMPLE)
            user = await acl.node_role(root, p, "node-a", "node-a-pw")

            def as_node() -> EtcdClient:
                return cluster.client(user=user, password="node-a-pw")

            registry = Registry()
            source = EtcdMeshSource(as_node, p, registry=registry)
            store = SnapshotStore(await source.initial(5.0))
            source.attach(store)
            task = asyncio.create_task(source.run())
            try:
                await until(lambda: source.synced, 3.0, "synced as the node user")
                await push.push(root, p, MeshText(TEXT.replace("frontend", "tls")))
                await until(lambda: account(store) == "tls", 1.0, "push over TLS + auth")
                assert source.last_error is None
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(body())


# --- apply_batch: no etcd ------------------------------------------------------------------------


def _event(kind: str, key: bytes, value: bytes, rev: int) -> WatchEvent:
    return WatchEvent(kind, KeyValue(key, value, rev, rev, 1))  # type: ignore[arg-type]


def test_apply_batch_swaps_refuses_and_ignores_no_ops(tmp_path: Path) -> None:
    p = "/zt"
    objects = push.load_objects(p, EXAMPLE)

    def no_etcd() -> EtcdClient:
        raise AssertionError("apply_batch needs no client")

    registry = Registry()
    source = EtcdMeshSource(no_etcd, p, registry=registry, cache=tmp_path / "m.json")
    store = SnapshotStore(Snapshot.build())
    source.attach(store)
    events = [_event("put", k, v, 5) for k, v in objects.items()]
    got = source.apply_batch(events)
    assert isinstance(got, Snapshot) and len(store.current.workloads) == 5
    assert source.revision == 5 and store.generation == 2
    assert source.apply_batch(events[:2]) is None  # same bytes again: nothing to do
    key = keys.service_key(p, "default", "echo")
    refused = source.apply_batch([_event("delete", key, b"", 6)])
    assert isinstance(refused, ReloadFailure) and refused.reason == "etcd_mesh_invalid"
    assert "default%2Fpod-b1: services: got" in refused.message
    assert registry.value(ERRORS, reason="etcd_mesh_invalid") == 1
    assert store.generation == 2 and store.last_error is refused
    other = [_event("put", b"/elsewhere/x", b"junk", 7)]
    assert source.apply_batch(other) is None  # outside the mesh prefix
    back = source.apply_batch([_event("put", key, objects[key], 8)])
    assert isinstance(back, Snapshot) and store.generation == 3 and store.last_error is None
    assert load_file(tmp_path / "m.json").services == back.services
