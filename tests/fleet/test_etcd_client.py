"""zt/fleet/etcd.py against real etcd members: kv, txn, watches, failover, TLS + auth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cli._etcd import settings_from
from tests.fleet.etcdfix import ROOT_PASSWORD, run
from zt.fleet import etcdwatch
from zt.fleet.connect import EtcdOptionError
from zt.fleet.etcd import Compare, Delete, EtcdClient, Put, WatchBatch, prefix_end
from zt.fleet.etcderrors import (
    EtcdAuthFailed,
    EtcdBadAnswer,
    EtcdCompacted,
    EtcdError,
    EtcdPermissionDenied,
    EtcdUnavailable,
)
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.etcdwire import decode_range


def test_prefix_end() -> None:
    assert prefix_end(b"/zt/") == b"/zt0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_put_get_range_delete(etcd1: EtcdCluster, etcd_prefix: bytes) -> None:
    p = etcd_prefix

    async def body() -> None:
        async with etcd1.client() as c:
            rev1 = await c.put(p + b"a", b"1")
            rev2 = await c.put(p + b"b", b"\x00\xffbinary")
            assert rev2 == rev1 + 1
            kv = await c.get(p + b"b")
            assert kv is not None
            assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
                b"\x00\xffbinary",
                rev2,
                rev2,
                1,
            )
            assert await c.get(p + b"missing") is None
            kvs, rev = await c.range(p, prefix_end(p))
            assert [kv.key for kv in kvs] == [p + b"a", p + b"b"] and rev == rev2
            keys, _ = await c.range(p, prefix_end(p), keys_only=True, limit=1)
            assert [(kv.key, kv.value) for kv in keys] == [(p + b"a", b"")]
            old, _ = await c.range(p + b"a", revision=rev1)
            assert old[0].value == b"1"
            await c.delete(p, prefix_end(p))
            assert (await c.range(p, prefix_end(p)))[0] == []

    run(body())


def test_txn_guarded_conflict_exactly_one_wins(etcd1: EtcdCluster, etcd_prefix: bytes) -> None:
    key = etcd_prefix + b"k"

    async def body() -> None:
        async with etcd1.client() as a, etcd1.client() as b:
            read = await a.put(key, b"v0")

            def guarded(value: bytes) -> tuple[list[Compare], list[Put | Delete]]:
                return [Compare(key, "mod", "equal", read)], [Put(key, value)]

            results = await asyncio.gather(a.txn(*guarded(b"a")), b.txn(*guarded(b"b")))
            assert sorted(r.succeeded for r in results) == [False, True]
            winner = b"a" if results[0].succeeded else b"b"
            kv = await a.get(key)
            assert kv is not None and kv.value == winner
            # failure branch and create==0 ("absent") guards
            res = await a.txn(
                [Compare(key, "create", "equal", 0)],
                [Put(key, b"never")],
                [Delete(key)],
            )
            assert not res.succeeded and await a.get(key) is None

    run(body())


async def _next_batch(watch: AsyncIterator[WatchBatch], timeout: float) -> WatchBatch:
    return await asyncio.wait_for(anext(watch), timeout)


def test_watch_delivers_put_and_delete_within_1s(etcd1: EtcdCluster, etcd_prefix: bytes) -> None:
    p = etcd_prefix

    async def body() -> None:
        async with etcd1.client() as c:
            _, rev = await c.range(p)
            watch = c.watch(p, prefix_end(p), start_revision=rev + 1, prev_kv=True)
            try:
                first = asyncio.create_task(_next_batch(watch, 5.0))
                await asyncio.sleep(0.2)  # the watch is open and idle
                t0 = time.monotonic()
                put_rev = await c.put(p + b"x", b"1")
                batch = await first
                assert time.monotonic() - t0 < 1.0
                assert batch.revision == put_rev
                assert [(e.kind, e.kv.key, e.kv.value) for e in batch.events] == [
                    ("put", p + b"x", b"1")
                ]
                del_rev = await c.delete(p + b"x")
                batch = await _next_batch(watch, 1.0)
                assert batch.revision == del_rev
                assert [(e.kind, e.kv.key, e.kv.value) for e in batch.events] == [
                    ("delete", p + b"x", b"")
                ]
            finally:
                await watch.aclose()

    run(body())


def test_watch_from_compacted_revision_raises(etcd1: EtcdCluster, etcd_prefix: bytes) -> None:
    key = etcd_prefix + b"c"

    async def body() -> None:
        async with etcd1.client() as c:
            first = await c.put(key, b"1")
            last = await c.put(key, b"2")
            await c.compact(last)
            with pytest.raises(EtcdCompacted) as err:
                async for _ in c.watch(key, start_revision=first):
                    pass
            assert err.value.compact_revision == last

    run(body())


async def _watch_until_broken(
    client: EtcdClient, key: bytes, start: int, seen: list[WatchBatch]
) -> float:
    """Consume a watch until it raises EtcdUnavailable; the monotonic time it did."""
    with pytest.raises(EtcdUnavailable):
        async for batch in client.watch(key, prefix_end(key), start_revision=start):
            seen.append(batch)
    return time.monotonic()


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_dead_member_breaks_watch_and_resume_loses_nothing(
    etcd3: EtcdCluster, etcd_prefix: bytes, how: str
) -> None:
    p = etcd_prefix

    async def body() -> None:
        async with etcd3.client() as watcher, etcd3.client() as writer:
            start = await writer.put(p + b"0", b"before") + 1
            watched = etcd3.member(watcher.endpoint_order()[0])
            seen: list[WatchBatch] = []
            task = asyncio.create_task(_watch_until_broken(watcher, p, start, seen))
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            (etcd3.kill if how == "kill" else etcd3.freeze)(watched)
            # written while the watch is broken: the resumed watch must deliver it
            missed = await writer.put(p + b"1", b"meanwhile")
            broken_at = await task
            assert broken_at - t0 < 4.0, f"watch noticed the {how} after {broken_at - t0:.1f} s"
            last = max([start - 1, *(b.revision for b in seen)])
            resumed = watcher.watch(p, prefix_end(p), start_revision=last + 1)
            try:
                batch = await _next_batch(resumed, 5.0)
            finally:
                await resumed.aclose()
            assert watcher.endpoint_order()[0] != watched.client_url
            assert [(e.kv.key, e.kv.mod_revision) for e in batch.events] == [(p + b"1", missed)]

    run(body())


def test_all_members_down_names_every_endpoint(etcd3: EtcdCluster) -> None:
    etcd3.stop_all()

    async def body() -> None:
        async with etcd3.client(timeout=0.5) as c:
            with pytest.raises(EtcdUnavailable) as err:
                await c.get(b"/anything")
        for endpoint in etcd3.endpoints:
            assert endpoint in str(err.value)
        assert len(err.value.failures) == 3

    try:
        run(body())
    finally:
        etcd3.heal()


def test_tls_auth_wrong_password(etcd_tls_auth: EtcdCluster) -> None:
    async def body() -> None:
        async with etcd_tls_auth.client(user="root", password="wrong") as c:
            with pytest.raises(EtcdAuthFailed, match="'root'"):
                await c.get(b"/x")

    run(body())


def test_tls_auth_permission_denied_names_key(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes
) -> None:
    p = etcd_prefix

    async def body() -> None:
        async with etcd_tls_auth.client() as root:
            await root.user_add("reader", "pw")
            await root.user_add("reader", "pw2")  # idempotent: changes the password
            await root.role_add("reader")
            await root.role_add("reader")
            await root.role_grant("reader", p + b"open/", prefix_end(p + b"open/"), "read")
            await root.user_grant_role("reader", "reader")
            await root.put(p + b"open/a", b"1")
        async with etcd_tls_auth.client(user="reader", password="pw2") as c:
            kv = await c.get(p + b"open/a")
            assert kv is not None and kv.value == b"1"
            with pytest.raises(EtcdPermissionDenied, match="secret"):
                await c.get(p + b"secret")
            with pytest.raises(EtcdPermissionDenied, match="open/a"):
                await c.put(p + b"open/a", b"2")
            with pytest.raises(EtcdPermissionDenied, match="secret"):
                async for _ in c.watch(p + b"secret", start_revision=0):
                    pass
            # a token the member no longer knows (expired, member restarted): re-authenticate
            c._tokens = dict.fromkeys(c.endpoints, "bogus-token")
            assert await c.get(p + b"open/a") is not None
        async with etcd_tls_auth.client() as root:
            await root.user_delete("reader")
            await root.user_delete("reader")
            await root.role_delete("reader")

    run(body())


# --- the shared --etcd* flags (zt/fleet/connect.py) ----------------------------------------------


def test_settings_from_flags_reach_tls_auth_etcd(
    etcd_tls_auth: EtcdCluster, tmp_path: Path
) -> None:
    assert etcd_tls_auth.tls is not None
    pw = tmp_path / "pw"
    pw.write_text(ROOT_PASSWORD + "\n")
    settings = settings_from(
        ",".join(etcd_tls_auth.endpoints), etcd_tls_auth.tls.ca, None, None, "root", pw, "/zt/"
    )
    assert settings.prefix == "/zt" and settings.password == ROOT_PASSWORD
    assert ROOT_PASSWORD not in repr(settings)

    async def body() -> None:
        async with settings.client() as c:
            assert await c.put(b"/zt/connect", b"1") > 0

    run(body())


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        ({"etcd": ""}, "--etcd:"),
        ({"etcd": "127.0.0.1:2379"}, "--etcd:"),
        ({"etcd": "https://h:2379/v3"}, "--etcd:"),
        ({"etcd": "https://a:2379,http://b:2379"}, "--etcd:"),
        ({"etcd": "http://a:2379", "cacert": "CA"}, "--etcd:"),
        ({"cacert": "missing.pem"}, "--etcd-cacert:"),
        ({"cert": "CA"}, "--etcd-key:"),
        ({"user": "root"}, "--etcd-password-file:"),
        ({"password_file": "PW"}, "--etcd-user:"),
        ({"user": "root", "password_file": "EMPTY"}, "--etcd-password-file:"),
        ({"user": "root", "password_file": "missing"}, "--etcd-password-file:"),
        ({"prefix": "zt"}, "--etcd-prefix:"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(
    tmp_path: Path, flags: dict[str, str], flag: str
) -> None:
    files = {"CA": tmp_path / "ca.pem", "PW": tmp_path / "pw", "EMPTY": tmp_path / "empty"}
    files["CA"].write_text("pem")
    files["PW"].write_text("secret")
    files["EMPTY"].write_text("\n")
    args: dict[str, Any] = {"etcd": "https://127.0.0.1:2379"}
    for name, value in flags.items():
        args[name] = (
            value if name in ("etcd", "user", "prefix") else files.get(value, tmp_path / value)
        )
    with pytest.raises(EtcdOptionError) as err:
        settings_from(**args)
    message = str(err.value)
    assert message.startswith(flag) and "\n" not in message
    assert err.value.exit_code == 2


def test_a_malformed_answer_is_an_etcd_error_naming_the_field() -> None:
    doc = {"header": {"revision": "7"}, "kvs": [{"key": "not base64!", "mod_revision": "x"}]}
    with pytest.raises(EtcdBadAnswer) as err:
        decode_range(doc)
    assert "kv.key" in str(err.value) and "base64" in str(err.value)
    with pytest.raises(EtcdBadAnswer, match=r"header\.revision"):
        decode_range({"header": {"revision": "seven"}})


@pytest.mark.parametrize("line", ["{not json", "[1, 2]"])
def test_a_watch_line_that_is_not_a_json_object_breaks_the_stream(line: str) -> None:
    with pytest.raises(etcdwatch._StreamBroken):
        etcdwatch._next(line)


def test_unusable_tls_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(EtcdError, match=f"etcd CA certificate {bad}"):
        EtcdClient(["https://127.0.0.1:2379"], cacert=bad)
