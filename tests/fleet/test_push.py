"""push/get/diff against a real etcd member (tests/fleet/conftest.py `etcd1`)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.fleet.etcdfix import run
from zt.config.loader import load_file, load_text
from zt.fleet import keys, push
from zt.fleet.etcd import Delete, EtcdClient, Put
from zt.fleet.etcdserver import MAX_TXN_OPS, EtcdCluster
from zt.fleet.etcdwire import Compare, TxnResult
from zt.fleet.meshdoc import EtcdBadObject
from zt.fleet.push import MeshText, PushConflict, PushTooLarge

EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh.yaml"
TEXT = EXAMPLE.read_text()
_n = itertools.count()


def prefix() -> str:
    return f"/h2push{next(_n)}"


def test_push_then_get_equals_the_file(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            first = await push.push(client, p, EXAMPLE)
            assert first.diff.summary() == "8 added, 0 changed, 0 removed"
            doc, revision = await push.get(client, p)
            assert revision == first.revision
            again = await push.push(client, p, EXAMPLE)
            assert again.diff.empty and again.revision == first.revision  # no txn
            assert (await push.diff(client, p, EXAMPLE)).empty
        got = load_text(yaml.safe_dump(doc), "got.yaml")
        want = load_file(EXAMPLE)
        assert sorted(map(repr, got.workloads)) == sorted(map(repr, want.workloads))
        assert sorted(map(repr, got.policies)) == sorted(map(repr, want.policies))
        assert got.services == want.services

    run(body())


def test_push_writes_only_the_difference(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            untouched = await client.get(keys.workload_key(p, "legacy/db"))
            edited = TEXT.replace("serviceAccount: batch", "serviceAccount: jobs")
            edited = edited.replace("- name: deny-legacy", "- name: deny-old")
            change = await push.diff(client, p, MeshText(edited))
            assert change.summary() == "1 added, 1 changed, 1 removed"
            result = await push.push(client, p, MeshText(edited))
            assert result.diff.summary() == change.summary()
            assert await client.get(keys.policy_key(p, "default", "deny-legacy")) is None
            assert await client.get(keys.policy_key(p, "default", "deny-old")) is not None
            after = await client.get(keys.workload_key(p, "legacy/db"))
            assert untouched is not None and after is not None
            assert after.mod_revision == untouched.mod_revision  # not rewritten

    run(body())


def test_a_file_check_refuses_is_not_pushed(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            with pytest.raises(Exception) as exc:
                await push.push(client, p, MeshText(TEXT.replace("10.1.0.3", "10.1.0.2"), "m.yaml"))
            assert "workloads[1].workloadIps[0]" in str(exc.value)
            objects, _ = await push.read_objects(client, p)
            assert objects == {}

    run(body())


@pytest.mark.parametrize("second", ["edit", "delete-only"])
def test_two_pushes_prepared_on_one_revision_exactly_one_wins(
    etcd1: EtcdCluster, second: str
) -> None:
    """Also when the winner only deletes (no key left for the range compare to see)."""
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            a = push.load_objects(p, MeshText(TEXT.replace("frontend", "fa")))
            b = dict(push.load_objects(p, EXAMPLE))
            if second == "delete-only":
                del b[keys.policy_key(p, "default", "deny-legacy")]
            else:
                b = push.load_objects(p, MeshText(TEXT.replace("frontend", "fb")))
            prepared = await asyncio.gather(push.prepare(client, p, b), push.prepare(client, p, a))
            assert prepared[0].read_revision == prepared[1].read_revision
            results = await asyncio.gather(
                *(push.commit(client, x) for x in prepared), return_exceptions=True
            )
            winners = [r for r in results if isinstance(r, push.PushResult)]
            losers = [r for r in results if isinstance(r, PushConflict)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert "conflict: the mesh changed while this push was prepared" in str(losers[0])
            assert losers[0].exit_code == 3
            objects, _ = await push.read_objects(client, p)
            winner = prepared[results.index(winners[0])]
            assert objects == winner.objects  # the winner's mesh, whole

    run(body())


def test_an_outside_put_after_the_read_is_a_conflict(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            objects = push.load_objects(p, MeshText(TEXT.replace("frontend", "fa")))
            prepared = await push.prepare(client, p, objects)
            key = keys.workload_key(p, "legacy/db")
            current = await client.get(key)
            assert current is not None
            await client.put(key, current.value.replace(b"zt-legacy-db", b"other"))
            with pytest.raises(PushConflict):
                await push.commit(client, prepared)

    run(body())


class _RetriedTxn(EtcdClient):
    """A txn the client sent twice (the first answer lost, then retried on another member): the
    first applies, the second fails its compares."""

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        first = await super().txn(compare, success, failure)
        assert first.succeeded
        return await super().txn(compare, success, failure)


def test_a_retried_txn_that_had_applied_is_not_a_conflict(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with _RetriedTxn(etcd1.endpoints) as client:
            result = await push.push(client, p, EXAMPLE)
            assert result.diff.summary() == "8 added, 0 changed, 0 removed"
            objects, revision = await push.read_objects(client, p)
            assert len(objects) == 8 and result.revision <= revision

    run(body())


def test_a_push_larger_than_etcd_allows_says_what_to_raise(etcd1: EtcdCluster) -> None:
    p = prefix()
    limit = MAX_TXN_OPS  # what zt/fleet/etcdserver.py gives its members
    n = limit + 72
    workloads = [
        {"uid": f"u{i}", "name": f"w{i}", "workloadIps": [f"10.9.{i // 200}.{i % 200 + 1}"]}
        for i in range(n)
    ]
    text = json.dumps({"workloads": workloads})  # JSON: PyYAML would take seconds to parse it

    async def body() -> None:
        async with etcd1.client() as client:
            with pytest.raises(PushTooLarge) as exc:
                await push.push(client, p, MeshText(text, "big.json"))
            assert "--max-txn-ops" in str(exc.value) and f"{n + 1} operations" in str(exc.value)

    run(body())


def test_get_refuses_what_a_node_would_refuse(etcd1: EtcdCluster) -> None:
    p = prefix()

    async def body() -> None:
        async with etcd1.client() as client:
            await push.push(client, p, EXAMPLE)
            await client.put(keys.workload_key(p, "legacy/db"), b'{"uid":"legacy/db"}')
            with pytest.raises(EtcdBadObject) as exc:
                await push.get(client, p)
            assert "/mesh/workloads/legacy%2Fdb: name: got" in str(exc.value)

    run(body())
