"""Root rotation (zt/fleet/rotation.py): the pure schedule, the CA directory steps, the node-side
hooks (CertificateManager.replace_roots/renew_all), and 0 failed handshakes across a whole rotation
between two identities issued through the signer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.fleet.etcdfix import run
from tests.fleet.test_signer import ECHO, FRONTEND, fleet
from zt.fleet import csr, rotation
from zt.fleet.certsource import apply_bundle, signed_by
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.rotation import RotationState, plan
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.manager import CertificateManager
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import (
    cached_client_context,
    rotating_server_context,
    verify_client_peer,
    verify_server_peer,
)

T0 = 1_800_000_000.0


def test_plan_is_a_pure_schedule() -> None:
    assert plan(None, T0) == []
    unpublished = RotationState("introduced", T0, switch_after=60)
    assert plan(unpublished, T0 + 10_000) == []  # nodes never had the new root: no switch
    assert rotation.next_deadline(unpublished) is None
    s = RotationState("introduced", T0, switch_after=60, published=T0)
    assert plan(s, T0 + 59.9) == []
    assert plan(s, T0 + 60) == ["switch"]
    assert plan(s, T0 + 10_000) == ["switch"]  # a signer down past both deadlines: switch first
    sw = rotation.switched(s, T0 + 70, leaf_lifetime=3600)
    assert sw.retire_at == T0 + 70 + 3600
    assert plan(sw, T0 + 3669) == []
    assert plan(sw, T0 + 3670) == ["retire"]
    assert rotation.next_deadline(s) == T0 + 60 and rotation.next_deadline(sw) == T0 + 3670


def test_ca_dir_steps_survive_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, now=T0)
    old = ca.cert.public_bytes(rotation._PEM)
    state = rotation.introduce(d, switch_after=5, now=T0)
    with pytest.raises(rotation.RotationError, match="already in progress"):
        rotation.introduce(d, switch_after=5, now=T0)
    roots = rotation.bundle_roots(d)
    assert roots[0] == old and len(roots) == 2
    assert CertificateAuthority.load(d).cert.public_bytes(rotation._PEM) == old  # still signs
    assert rotation.read_state(d) == state  # what a restarted signer reads
    assert state.switch_at is None  # counted from the bundle's publication, not from introduce
    rotation.mark_published(d, roots[:1], T0 + 1)  # a bundle without the new root: not yet
    assert rotation.read_state(d) == state
    rotation.mark_published(d, roots, T0 + 2)
    rotation.mark_published(d, roots, T0 + 3)  # the first publication counts
    marked = rotation.read_state(d)
    assert marked is not None and marked.switch_at == T0 + 7
    assert plan(marked, T0 + 6) == [] and plan(marked, T0 + 7) == ["switch"]
    rotation.apply(d, "switch", now=T0 + 5, leaf_lifetime=100)
    rotation.apply(d, "switch", now=T0 + 6, leaf_lifetime=100)  # idempotent
    new = CertificateAuthority.load(d)
    assert new.cert.public_bytes(rotation._PEM) == roots[1]
    assert rotation.bundle_roots(d) == [roots[1], old]
    assert new.leaf_chain_pem == b""  # the signing root is in the bundle: leaves carry no chain
    st = rotation.read_state(d)
    assert st is not None and st.phase == "switched" and st.retire_at == T0 + 105
    rotation.apply(d, "retire", now=T0 + 105, leaf_lifetime=100)
    assert rotation.bundle_roots(d) == [roots[1]]
    assert rotation.read_state(d) is None
    assert len(list((d / "archive").glob("*.key"))) == 1
    assert (d / "archive").stat().st_mode & 0o777 == 0o700


def test_retire_waits_for_the_longest_leaf_the_old_root_signed(tmp_path: Path) -> None:
    """A leaf signed under a longer --leaf-lifetime than the signer has at the switch still
    outlives the old root's place in the bundle: retire waits for it."""
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, now=T0)
    ca.issue(SpiffeId("cluster.local", "ns", "long"), now=T0, lifetime=500)
    # a node certificate (a year) is no leaf a peer verifies: it does not hold the root back
    ca.issue(csr.node_identity("cluster.local", "n1"), now=T0, lifetime=365 * 86400)
    rotation.introduce(d, switch_after=1, now=T0)
    rotation.mark_published(d, rotation.bundle_roots(d), T0)
    rotation.apply(d, "switch", now=T0 + 5, leaf_lifetime=100)
    st = rotation.read_state(d)
    assert st is not None and st.retire_at == T0 + 500  # not T0 + 105


def test_retire_after_overrides_the_leaf_log(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d, now=T0)
    ca.issue(SpiffeId("cluster.local", "ns", "long"), now=T0, lifetime=500)
    rotation.introduce(d, switch_after=1, now=T0, retire_after=8)
    rotation.mark_published(d, rotation.bundle_roots(d), T0)
    rotation.apply(d, "switch", now=T0 + 5, leaf_lifetime=100)
    st = rotation.read_state(d)
    assert st is not None and st.retire_at == T0 + 13


class _AsyncCa:
    """An async source over a local CA (the manager must await it, not thread it)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.calls = 0

    async def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = 86400
    ) -> WorkloadCert:
        self.calls += 1
        await asyncio.sleep(0)
        return self.ca.issue(identity, now=now, lifetime=lifetime)


def test_manager_replace_roots_and_renew_all(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    other = CertificateAuthority.init(tmp_path / "other")

    async def body() -> None:
        src = _AsyncCa(ca)
        mgr = CertificateManager(src)
        a = await mgr.get(FRONTEND)
        b = await mgr.get(ECHO)
        both = ca.roots_pem + other.roots_pem
        assert mgr.replace_roots(both) == 2
        a2 = mgr.cached(FRONTEND)
        assert a2 is not None and a2.roots_pem == both and a2.cert_pem == a.cert_pem
        assert cached_client_context(a2) is not cached_client_context(a)  # new handshakes see it
        assert mgr.replace_roots(both) == 0
        src.ca = other
        renewed = await mgr.renew_all(lambda c: not signed_by(c, other.roots_pem))
        assert renewed == 2 and src.calls == 4
        b2 = mgr.cached(ECHO)
        assert b2 is not None and b2.cert_pem != b.cert_pem and signed_by(b2, other.roots_pem)
        assert await mgr.renew_all(lambda c: not signed_by(c, other.roots_pem)) == 0

    run(body(), timeout=10)


def test_rotation_under_handshakes_fails_none(
    etcd_tls_auth: EtcdCluster, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async def body() -> None:
        async with fleet(etcd_tls_auth, etcd_prefix, tmp_path, leaf_lifetime=6, tick=0.1) as fl:
            node_a, node_b = await fl.join("node-a"), await fl.join("node-b")
            src_a, src_b = fl.source(node_a), fl.source(node_b)
            mgr_a, mgr_b = CertificateManager(src_a), CertificateManager(src_b)
            generations: list[int] = []
            tasks: list[asyncio.Task[object]] = []

            def follower(src: object, mgr: CertificateManager) -> None:
                def on_change(roots: bytes) -> None:
                    generations.append(getattr(src, "generation", 0))
                    tasks.append(asyncio.create_task(apply_bundle(mgr, roots)))

                tasks.append(asyncio.create_task(src.watch_bundle(on_change)))  # type: ignore[attr-defined]

            follower(src_a, mgr_a)
            follower(src_b, mgr_b)
            await mgr_b.get(ECHO)
            await asyncio.sleep(1.5)  # stagger the two leaves' half-lives
            await mgr_a.get(FRONTEND)
            stats = {"ok": 0, "failed": 0}
            errors: list[str] = []

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    verify_client_peer(writer.get_extra_info("ssl_object"), "cluster.local")
                    writer.write(await reader.readexactly(1))
                    await writer.drain()
                writer.close()

            def server_cert() -> WorkloadCert:
                cert = mgr_b.cached(ECHO)
                assert cert is not None
                return cert

            server = await asyncio.start_server(
                handle, "127.0.0.1", 0, ssl=rotating_server_context(server_cert)
            )
            port = server.sockets[0].getsockname()[1]

            async def handshakes(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    try:
                        await mgr_b.get(ECHO)  # the server side renews at half-life too
                        ctx = cached_client_context(await mgr_a.get(FRONTEND))
                        r, w = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", port, ssl=ctx), 3
                        )
                        verify_server_peer(w.get_extra_info("ssl_object"), [ECHO])
                        w.write(b"x")
                        assert await asyncio.wait_for(r.readexactly(1), 3) == b"x"
                        w.close()
                        stats["ok"] += 1
                    except Exception as exc:
                        stats["failed"] += 1
                        errors.append(repr(exc))
                    await asyncio.sleep(0.02)

            stop = asyncio.Event()
            loop_task = asyncio.create_task(handshakes(stop))
            try:
                await asyncio.sleep(0.5)
                ca_dir = fl.tmp / "ca"
                rotation.introduce(ca_dir, switch_after=1.0)
                await fl.signer.publish_bundle()  # what `zt ca rotate` does
                t0 = time.monotonic()
                moved_early = False
                while (state := rotation.read_state(ca_dir)) is not None:  # switch, then retire
                    assert time.monotonic() - t0 < 15, "rotation did not finish"
                    if state.phase == "switched" and not moved_early:
                        # the switch's bundle makes nodes renew at once, not at half-life (3 s)
                        await asyncio.sleep(1.0)
                        new_root = rotation.bundle_roots(ca_dir)[0]
                        for mgr, ident in ((mgr_a, FRONTEND), (mgr_b, ECHO)):
                            cert = mgr.cached(ident)
                            assert cert is not None and signed_by(cert, new_root), ident
                        moved_early = True
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # handshakes keep going on the retired-root bundle
            finally:
                stop.set()
                await loop_task
                server.close()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            print(f"FLEET rotation handshakes ok={stats['ok']} failed={stats['failed']}")
            assert stats["failed"] == 0, errors[:5]
            assert stats["ok"] > 50
            assert generations[-3:] == [2, 3, 4] or sorted(set(generations)) == [2, 3, 4]
            final_root = rotation.bundle_roots(ca_dir)
            assert len(final_root) == 1
            for mgr, ident in ((mgr_a, FRONTEND), (mgr_b, ECHO)):
                cert = mgr.cached(ident)
                assert cert is not None and signed_by(cert, final_root[0])
                assert x509.load_pem_x509_certificates(cert.roots_pem) == [
                    x509.load_pem_x509_certificate(final_root[0])
                ]
            bundle = json.loads((await fl.root.get(b"%s/ca/bundle" % fl.prefix.encode())).value)  # type: ignore[union-attr]
            assert bundle["generation"] == 4 and len(bundle["roots"]) == 1

    run(body(), timeout=40)
