"""etcd's ACL is what confines a node (zt/fleet/acl.py), proved on a real etcd with TLS + auth."""

from __future__ import annotations

import pytest

from tests.fleet.etcdfix import run
from zt.fleet import acl, join, keys
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdAuthFailed, EtcdPermissionDenied
from zt.fleet.etcdserver import EtcdCluster


def test_node_and_join_users_reach_only_their_keys(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes
) -> None:
    p = etcd_prefix.decode().rstrip("/")
    cl = etcd_tls_auth

    async def body() -> None:
        clients: list[EtcdClient] = []

        def as_user(user: str, password: str | None) -> EtcdClient:
            c = cl.client(user=user, password=password)
            clients.append(c)
            return c

        root = as_user("root", cl.root_password)
        try:
            await acl.bootstrap(root, p, str(cl.root_password))  # idempotent on a bootstrapped etcd
            await root.put(keys.workload_key(p, "default/pod-a1"), b"{}")
            await root.put(keys.bundle_key(p), b"{}")
            await root.put(keys.cert_key(p, "n1", "r"), b"mine")
            await root.put(keys.cert_key(p, "n2", "r"), b"theirs")
            await acl.node_role(root, p, "n1", "pw-n1")
            n1 = as_user(acl.node_user("n1"), "pw-n1")
            assert await n1.get(keys.workload_key(p, "default/pod-a1")) is not None
            assert await n1.get(keys.bundle_key(p)) is not None
            kv = await n1.get(keys.cert_key(p, "n1", "r"))
            assert kv is not None and kv.value == b"mine"
            await n1.put(keys.csr_key(p, "n1", "r"), b"{}")
            await n1.delete(keys.csr_key(p, "n1", "r"))
            denied = [
                n1.get(keys.cert_key(p, "n2", "r")),
                n1.put(keys.workload_key(p, "default/evil"), b"{}"),
                n1.put(keys.csr_key(p, "n2", "r"), b"{}"),
                n1.put(keys.cert_key(p, "n1", "forged"), b"{}"),
                n1.put(keys.node_cert_key(p, "n1"), b"{}"),
                n1.get(keys.token_key(p, "abcd0123")),
            ]
            for op in denied:
                with pytest.raises(EtcdPermissionDenied):
                    await op
            # a join token's user: its own join keys and the bundle, nothing else
            token = await join.create_token(root, p, "n3", ttl=60)
            j = as_user(token.user, token.secret)
            await j.put(keys.join_request_key(p, token.id), b"{}")
            assert await j.get(keys.bundle_key(p)) is not None
            for op in (
                j.get(keys.token_key(p, token.id)),
                j.get(keys.workload_key(p, "default/pod-a1")),
                j.put(keys.join_request_key(p, "ffffffff"), b"{}"),
            ):
                with pytest.raises(EtcdPermissionDenied):
                    await op
            await join.remove_token(root, p, token.id)
            with pytest.raises(EtcdAuthFailed):
                await as_user(token.user, token.secret).get(keys.bundle_key(p))
        finally:
            for c in clients:
                await c.close()

    run(body(), timeout=30)
