"""Join tokens end to end (zt/fleet/join.py, `zt node join`): one node, one use, a deadline; the
CA key stays with the signer."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.fleet.etcdfix import run
from tests.fleet.test_signer import fleet
from zt.fleet import join, keys
from zt.fleet.etcderrors import EtcdAuthFailed
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.nodestate import NodeState
from zt.fleet.signer import Signer
from zt.identity.ca import CertificateAuthority

ZT = str(Path(sys.executable).with_name("zt"))
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def joined_count(signer: Signer, want: int, timeout: float = 2.0) -> int:
    """The signer's count of admissions once it reaches `want` (or the timeout): it counts after
    it answers, so a joiner may read its answer a moment before the count moves."""
    deadline = time.monotonic() + timeout
    while signer.stats.joined < want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return signer.stats.joined


def test_tokens_are_single_use_per_node_and_expire(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            p = fl.prefix
            token = await join.create_token(fl.root, p, "node-a", ttl=600)
            ok = await join.request_join(fl.client(token.user, token.secret), p, token, "node-a")
            assert ok.etcd_user == "zt-node-node-a" and ok.bundle.generation == 1
            assert await fl.root.get(keys.join_request_key(p, token.id)) is None  # password gone
            node_kv = await fl.root.get(keys.node_cert_key(p, "node-a"))
            assert node_kv is not None and b"BEGIN CERTIFICATE" in node_kv.value

            refusals = {}
            again = fl.client(token.user, token.secret)
            refusals["token_used"] = join.request_join(again, p, token, "node-a")
            other = await join.create_token(fl.root, p, "node-b", ttl=600)
            refusals["token_foreign_node"] = join.request_join(
                fl.client(other.user, other.secret), p, other, "node-c"
            )
            old = await join.create_token(fl.root, p, "node-d", ttl=600, now=time.time() - 700)
            refusals["token_expired"] = join.request_join(
                fl.client(old.user, old.secret), p, old, "node-d"
            )
            for reason, attempt in refusals.items():
                with pytest.raises(join.JoinRefused) as err:
                    await attempt
                assert err.value.refusal == reason
                assert str(err.value).startswith(f"join refused: {reason}: ")
                assert "\n" not in str(err.value)
            assert await joined_count(fl.signer, 1) == 1

    run(body(), timeout=30)


def test_cli_init_token_and_join_and_a_one_line_refusal(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    assert etcd_tls_auth.tls is not None
    flags = [
        "--etcd",
        ",".join(etcd_tls_auth.endpoints),
        "--etcd-cacert",
        str(etcd_tls_auth.tls.ca),
    ]

    async def zt(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            ZT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            pw = tmp_path / "root.pw"
            pw.write_text(f"{etcd_tls_auth.root_password}\n")
            root = [*flags, "--etcd-prefix", fl.prefix, "--etcd-password-file", str(pw)]
            init, tok_a, tok_b = await asyncio.gather(  # CLI start-up is slow: side by side
                # reuses the CA: idempotent
                zt("ca", "init", "--ca-dir", str(fl.tmp / "ca"), *root),
                zt("ca", "token", "create", "--node", "node-a", "--ttl", "10m", *root),
                zt("ca", "token", "create", "--node", "node-b", *root),
            )
            assert init[0] == 0 and "bundle generation 1" in init[1], init[2]
            for rc, out, err in (tok_a, tok_b):
                assert rc == 0 and out.count("\n") == 1 and out.startswith("ztjoin-"), err
            state, other = tmp_path / "node-a", tmp_path / "node-c"
            common = [*flags, "--etcd-prefix", fl.prefix, "--state-dir"]
            (rc, out, err), (rc_c, _out, err_c) = await asyncio.gather(
                zt("node", "join", *common, str(state), "--token", tok_a[1].strip(), "--node", "node-a"),
                zt("node", "join", *common, str(other), "--token", tok_b[1].strip(), "--node", "node-c"),
            )  # fmt: skip
            assert rc == 0 and "node node-a joined" in out, err
            assert rc_c == 2 and err_c.count("\n") == 1, err_c
            assert err_c.startswith("zt: join refused: token_foreign_node: ")
            assert not other.exists()
            st = NodeState.load(state)
            assert (st.node, st.trust_domain, st.user) == (
                "node-a",
                "cluster.local",
                "zt-node-node-a",
            )
            assert os.stat(state).st_mode & 0o777 == 0o700
            for secret in ("node.key", "etcd.password"):
                assert os.stat(state / secret).st_mode & 0o777 == 0o600
            async with st.settings().client() as node_client:  # the node's own etcd user works
                assert await node_client.get(keys.bundle_key(fl.prefix)) is not None
            _assert_ca_key_on_no_node(fl.tmp / "ca", [state])

    run(body(), timeout=40)


def _assert_ca_key_on_no_node(ca_dir: Path, state_dirs: list[Path]) -> None:
    """The CA's public key matches no private key in any node state dir."""
    ca_public = CertificateAuthority.load(ca_dir).key.public_key().public_bytes(*_SPKI)
    seen = 0
    for d in state_dirs:
        for f in d.glob("*") if d.exists() else ():
            try:
                key = serialization.load_pem_private_key(f.read_bytes(), password=None)
            except (ValueError, TypeError):
                continue
            seen += 1
            assert key.public_key().public_bytes(*_SPKI) != ca_public, f
    assert seen >= 1  # the node key was found (and is not the CA's)


def test_expired_tokens_are_swept(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            fl.signer.sweep_grace = 0.0
            old = await join.create_token(fl.root, fl.prefix, "node-x", ttl=0.5)
            deadline = time.monotonic() + 5
            while await fl.root.get(keys.token_key(fl.prefix, old.id)) is not None:
                assert time.monotonic() < deadline, "expired token never swept"
                await asyncio.sleep(0.1)
            with pytest.raises(EtcdAuthFailed):
                await fl.client(old.user, old.secret).get(keys.bundle_key(fl.prefix))
            # a used token goes too, long before it expires: its join user could read the
            # node's etcd password in the history of the join request
            fl.signer.sweep_grace = 300.0
            used = await join.create_token(fl.root, fl.prefix, "node-y", ttl=3600)
            await join.request_join(fl.client(used.user, used.secret), fl.prefix, used, "node-y")
            fl.signer.sweep_grace = 0.0
            deadline = time.monotonic() + 5
            while await fl.root.get(keys.token_key(fl.prefix, used.id)) is not None:
                assert time.monotonic() < deadline, "used token never swept"
                await asyncio.sleep(0.1)
            with pytest.raises(EtcdAuthFailed):
                await fl.client(used.user, used.secret).get(keys.bundle_key(fl.prefix))

    run(body(), timeout=30)


def test_nodes_joining_at_the_same_moment_are_all_admitted(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    """Each admission adds an etcd user, which makes every other joiner's token stale ("revision
    of auth store is old"): the client logs in again with a backoff instead of calling the token
    unknown."""
    nodes = [f"node-{i}" for i in range(4)]

    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path) as fl:
            p = fl.prefix
            tokens = [await join.create_token(fl.root, p, n, ttl=600) for n in nodes]
            joined = await asyncio.gather(
                *(
                    join.request_join(fl.client(t.user, t.secret), p, t, n)
                    for t, n in zip(tokens, nodes, strict=True)
                )
            )
            assert sorted(j.etcd_user for j in joined) == [f"zt-node-{n}" for n in nodes]
            assert await joined_count(fl.signer, len(nodes)) == len(nodes)

    run(body(), timeout=60)
