"""zt/fleet/etcdserver.py: TLS material, argv, and clusters of real etcd members."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from tests.fleet.etcdfix import ROOT_PASSWORD, run
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdAuthFailed
from zt.fleet.etcdserver import (
    EtcdCluster,
    EtcdServerError,
    EtcdTls,
    MemberSpec,
    bootstrap_auth,
    cluster_argv,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tls_material(tmp_path: Path) -> None:
    tls = EtcdTls.create(tmp_path, ["127.0.0.1", "etcd.example"])
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    for cert_path, key_path in ((tls.server_cert, tls.server_key), (tls.peer_cert, tls.peer_key)):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert san.get_values_for_type(x509.DNSName) == ["etcd.example"]
        assert key_path.stat().st_mode & 0o077 == 0


def test_tls_keys_stay_private_when_rewritten(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("old")
    (tmp_path / "server.key").chmod(0o644)
    tls = EtcdTls.create(tmp_path, ["127.0.0.1"])
    assert tls.server_key.stat().st_mode & 0o777 == 0o600


def test_cluster_argv_flags(tmp_path: Path) -> None:
    spec = MemberSpec("m0", tmp_path / "d", "https://127.0.0.1:1", "https://127.0.0.1:2")
    plain = cluster_argv(spec, "m0=https://127.0.0.1:2", None)
    assert "--initial-cluster-state=new" in plain and "--enable-v2=false" in plain
    assert not any("cert" in a or "trusted" in a for a in plain)
    tls = cluster_argv(spec, "m0=https://127.0.0.1:2", EtcdTls(tmp_path), state="existing")
    assert "--initial-cluster-state=existing" in tls
    assert "--peer-client-cert-auth" in tls
    # etcd 3.4 would demand client certificates, which the JSON gateway clients do not send
    assert not any(a.startswith(("--trusted-ca-file", "--client-cert-auth")) for a in tls)


def _wait_new_leader(cluster: EtcdCluster, old: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            leader = cluster.leader().name
            if leader != old:
                return leader
        except EtcdServerError:
            pass
        assert time.monotonic() < deadline, "no new leader"
        time.sleep(0.05)


def test_leader_kill_elects_another_and_restart_rejoins(etcd3: EtcdCluster) -> None:
    old = etcd3.leader()
    pid = old.pid
    etcd3.kill(old)
    assert not _alive(pid)
    _wait_new_leader(etcd3, old.name)

    async def write() -> int:
        async with etcd3.client() as c:
            return await c.put(b"/srv/while-down", b"1")

    rev = run(write())
    etcd3.restart(old)
    assert old.running and old.pid != pid

    async def read_from_restarted() -> int:
        async with EtcdClient([old.client_url], timeout=2.0) as c:
            deadline = time.monotonic() + 5
            while True:  # the restarted member catches up from the leader
                kv = await c.get(b"/srv/while-down")
                if kv is not None or time.monotonic() > deadline:
                    return kv.mod_revision if kv else 0
                await asyncio.sleep(0.05)

    assert run(read_from_restarted()) == rev


def test_failed_start_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EtcdServerError, match="exited"):
            EtcdCluster.start(tmp_path / "c", tls=False, ports=[(port, port + 1)])
    assert not (tmp_path / "c" / "etcd0.data").exists()
    out = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, check=False)
    assert out.stdout == b""


def test_close_kills_members_and_removes_dirs() -> None:
    cluster = EtcdCluster.start(size=1, tls=False)
    pid, base = cluster.members[0].pid, cluster.base_dir
    assert str(base).startswith("/dev/shm/") and _alive(pid)
    cluster.close()
    assert not _alive(pid) and not base.exists()


def test_bootstrap_auth_is_idempotent(etcd_tls_auth: EtcdCluster) -> None:
    async def body() -> None:
        async with etcd_tls_auth.client() as root:
            await bootstrap_auth(root, ROOT_PASSWORD)
            assert await root.put(b"/srv/auth", b"1") > 0
        assert etcd_tls_auth.tls is not None
        async with EtcdClient(etcd_tls_auth.endpoints, cacert=etcd_tls_auth.tls.ca) as anonymous:
            with pytest.raises(EtcdAuthFailed, match="no user given"):
                await anonymous.get(b"/srv/auth")

    run(body())


@pytest.mark.root
def test_cluster_in_netns() -> None:
    ns = f"zt-etcd-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        cluster = EtcdCluster.start(size=1, tls=True, netns=ns)
        try:
            assert cluster.endpoints == ["https://127.0.0.1:2379"]
            assert cluster.leader() is cluster.members[0]
        finally:
            cluster.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
