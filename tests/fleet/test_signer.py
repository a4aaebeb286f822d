"""`zt ca serve` end to end on a real etcd (TLS + auth): nodes get their own workloads' certificates,
never another node's; answers follow CSRs; a restarted signer never signs twice.

The `Fleet` helper here (a CA dir, the signer as a task, nodes joined through tokens) is shared by
tests/fleet/test_join.py and tests/fleet/test_rotation.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.fleet.etcdfix import run
from zt.fleet import acl, csr, join, keys, meshdoc
from zt.fleet.certsource import EtcdCertificateSource
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.nodestate import NodeState
from zt.fleet.signer import Signer
from zt.identity.ca import CertificateAuthority
from zt.identity.errors import CertificateRefused
from zt.identity.manager import CertificateManager
from zt.identity.spiffe import SpiffeId
from zt.telemetry.metrics import Registry

MESH = Path(__file__).resolve().parents[2] / "examples" / "mesh.yaml"
FRONTEND = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/frontend")  # on node-a
ECHO = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/echo")  # on node-b


@dataclass
class Fleet:
    cluster: EtcdCluster
    prefix: str
    tmp: Path
    root: EtcdClient
    signer: Signer
    task: asyncio.Task[None] | None = None
    clients: list[EtcdClient] = field(default_factory=list)

    def client(self, user: str | None = None, password: str | None = None) -> EtcdClient:
        if user is None:
            user, password = "root", self.cluster.root_password
        c = self.cluster.client(user=user, password=password)
        self.clients.append(c)
        return c

    async def join(self, node: str) -> NodeState:
        token = await join.create_token(self.root, self.prefix, node, ttl=600)
        joined = await join.request_join(
            self.client(token.user, token.secret), self.prefix, token, node, timeout=10
        )
        assert self.cluster.tls is not None
        return NodeState.write(
            self.tmp / f"state-{node}",
            node_key_pem=joined.node_key_pem,
            node_cert_pem=joined.node_cert_pem,
            bundle_pem=joined.bundle.roots_pem,
            endpoints=tuple(self.cluster.endpoints),
            cacert=self.cluster.tls.ca,
            user=joined.etcd_user,
            password=joined.etcd_password,
            prefix=self.prefix,
        )

    def source(self, state: NodeState, registry: Registry | None = None) -> EtcdCertificateSource:
        settings = state.settings()

        def connect() -> EtcdClient:
            c = settings.client()
            self.clients.append(c)
            return c

        return EtcdCertificateSource(
            connect,
            state.prefix,
            state.node,
            state.node_key_pem,
            state.node_cert_pem,
            roots_pem=state.bundle_pem,
            timeout=5,
            registry=registry,
        )

    def start(self) -> None:
        self.task = asyncio.create_task(self.signer.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@contextlib.asynccontextmanager
async def fleet(
    cluster: EtcdCluster,
    prefix: bytes,
    tmp: Path,
    *,
    leaf_lifetime: float = 3600,
    tick: float = 0.2,
) -> AsyncIterator[Fleet]:
    p = prefix.decode().rstrip("/")
    root = cluster.client(user="root", password=cluster.root_password)
    fl: Fleet | None = None
    try:
        await acl.ensure_roles(root, p)
        CertificateAuthority.init(tmp / "ca")
        for key, value in meshdoc.encode(p, yaml.safe_load(MESH.read_text())).items():
            await root.put(key, value)
        signer = Signer(root, p, tmp / "ca", leaf_lifetime=leaf_lifetime, tick=tick)
        await signer.publish_bundle()
        fl = Fleet(cluster, p, tmp, root, signer)
        fl.start()
        yield fl
    finally:
        if fl is not None:
            await fl.stop()
            for c in fl.clients:
                await c.close()
        await root.close()


def test_nodes_get_only_their_own_workloads(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            a, b = await fl.join("node-a"), await fl.join("node-b")
            reg_b = Registry()
            src_a, src_b = fl.source(a), fl.source(b, reg_b)
            t0 = time.monotonic()
            cert = await src_a.issue(FRONTEND, now=time.time())
            took = time.monotonic() - t0
            assert cert.identity == FRONTEND and cert.roots_pem == a.bundle_pem
            leaf = x509.load_pem_x509_certificate(cert.cert_pem)
            root = x509.load_pem_x509_certificate(a.bundle_pem)
            leaf.verify_directly_issued_by(root)  # raises if not
            with pytest.raises(CertificateRefused) as err:
                await src_b.issue(FRONTEND, now=time.time())
            assert err.value.refusal == "workload_not_on_node"
            assert "node-b" in str(err.value) and "\n" not in str(err.value)
            assert reg_b.value("zt_certificate_refused_total", reason="workload_not_on_node") == 1
            assert fl.signer.stats.signed == 1
            assert fl.signer.stats.refused == {"workload_not_on_node": 1}
            # the manager awaits the async source (no thread), and caches
            mgr = CertificateManager(src_b)
            got = await mgr.get(ECHO)
            assert got is await mgr.get(ECHO)
            print(f"FLEET csr_roundtrip first={took * 1000:.0f}ms")

    run(body(), timeout=30)


def test_answers_follow_csrs_and_a_restart_never_signs_twice(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            a = await fl.join("node-a")
            await fl.stop()  # a CSR put while no signer runs is answered at the next list
            node_key = NodeState.load(a.directory).node_key_pem
            _k, env = csr.make_request(FRONTEND, csr.load_private_key(node_key, what="k"), 0)
            nc = a.settings().client()
            fl.clients.append(nc)
            await nc.put(keys.csr_key(fl.prefix, "node-a", "r1"), env.to_json())
            fl.start()
            answer = await _wait_for(nc, keys.cert_key(fl.prefix, "node-a", "r1"))
            assert "chain" in json.loads(answer)
            signed = fl.signer.stats.signed
            await fl.stop()
            fl.signer = Signer(fl.root, fl.prefix, fl.tmp / "ca", tick=0.2)  # a restart: re-list
            fl.start()
            await asyncio.sleep(0.5)
            assert fl.signer.stats.signed == 0 and signed == 1
            await nc.delete(keys.csr_key(fl.prefix, "node-a", "r1"))
            await _wait_gone(nc, keys.cert_key(fl.prefix, "node-a", "r1"))

    run(body(), timeout=30)


async def _wait_for(client: EtcdClient, key: bytes, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kv = await client.get(key)
        if kv is not None:
            return kv.value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key!r} never appeared")


async def _wait_gone(client: EtcdClient, key: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await client.get(key) is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key!r} never went away")


def test_signer_rides_out_an_etcd_outage(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    """Last in this module: it stops the module's etcd member and restarts it."""

    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            fl.signer.backoff = (0.1, 0.5)
            src = fl.source(await fl.join("node-a"))
            await asyncio.sleep(0.2)
            lists = fl.signer.stats.lists
            member = etcd_tls_auth.members[0]
            await asyncio.to_thread(etcd_tls_auth.stop, member)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(etcd_tls_auth.restart, member)
            cert = await src.issue(FRONTEND, now=time.time())
            assert cert.identity == FRONTEND
            assert fl.signer.stats.lists > lists  # it listed again after the outage

    run(body(), timeout=30)
