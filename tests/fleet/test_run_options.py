"""`zt run`'s two modes: exactly one of --config and --etcd; file mode never creates a CA silently;
followers get what they need in both modes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from tests.fleet.etcdfix import run, unique_prefix
from zt.config import load_file
from zt.config.dump import document
from zt.fleet import acl, csr, push
from zt.fleet.etcderrors import EtcdUnavailable
from zt.fleet.etcdserver import EtcdCluster, free_ports
from zt.fleet.nodestate import NodeState
from zt.fleet.push import MeshText
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.node.options import ModeConflict, NodeOptions
from zt.node.sources import (
    CaMissing,
    WrongNode,
    open_certs,
    open_config,
    open_follower_config,
    preflight,
)
from zt.telemetry.metrics import Registry

ETCD = "https://127.0.0.1:2379"
EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh.yaml"


def _run(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["run", "--node", "n1", *args])
    return result.exit_code, result.stderr.splitlines()


@pytest.mark.parametrize(
    ("args", "got"),
    [(["--config", str(EXAMPLE), "--etcd", ETCD], "both"), ([], "neither")],
)
def test_exactly_one_of_config_and_etcd(args: list[str], got: str) -> None:
    code, lines = _run(*args)
    assert code == 2
    assert lines == [
        f"zt: --config/--etcd: got {got}, expected exactly one: --config FILE (file mode) or "
        "--etcd URLS (fleet mode)"
    ]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--config", str(EXAMPLE), "--etcd-cacert", "ca.pem"], "--etcd-cacert"),
        (["--etcd", ETCD, "--init-ca"], "--init-ca"),
        (["--etcd", "127.0.0.1:2379"], "--etcd"),
    ],
)
def test_flags_of_the_other_mode_are_refused(args: list[str], flag: str) -> None:
    code, lines = _run(*args)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"zt: {flag}: got ")


def test_missing_ca_is_one_line_naming_ca_dir(tmp_path: Path) -> None:
    empty = tmp_path / "ca"
    code, lines = _run("--config", str(EXAMPLE), "--ca-dir", str(empty))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"zt: --ca-dir: no CA in {empty} ")
    assert f"`zt ca init --ca-dir {empty}`" in lines[0] and "--init-ca" in lines[0]
    assert not empty.exists()  # nothing was created on the way


def _file_options(tmp_path: Path, *, init_ca: bool) -> NodeOptions:
    return NodeOptions(
        node="n1", config=tmp_path / "mesh.yaml", ca_dir=tmp_path / "ca", init_ca=init_ca,
        trust_domain="example.org", pin_dir=tmp_path / "pins", workers=2,
    )  # fmt: skip


def test_init_ca_creates_one_followers_never_do(tmp_path: Path) -> None:
    options = _file_options(tmp_path, init_ca=True)
    with pytest.raises(CaMissing):  # a follower started before the CA: refused, not created
        asyncio.run(open_certs(options, Registry(), follower=True))
    with pytest.raises(CaMissing, match="--ca-dir"):
        asyncio.run(open_certs(_file_options(tmp_path, init_ca=False), Registry()))
    assert not (tmp_path / "ca").exists()

    async def issue(follower: bool) -> str:
        certs = await open_certs(options, Registry(), follower=follower)
        cert = await certs.manager.get(SpiffeId.parse("spiffe://example.org/ns/a/sa/b"))
        return cert.roots_pem.decode()

    roots = asyncio.run(issue(follower=False))
    assert (tmp_path / "ca" / "ca.pem").exists() and (tmp_path / "ca" / "ca.key").exists()
    assert asyncio.run(issue(follower=True)) == roots  # the follower loads the same CA


def test_follower_options_round_trip_in_fleet_mode(tmp_path: Path) -> None:
    options = NodeOptions(
        node="n1", etcd=(ETCD, "https://127.0.0.2:2379"), state_dir=tmp_path / "state",
        etcd_cacert=tmp_path / "etcd-ca.pem", pin_dir=tmp_path / "pins", workers=3,
    )  # fmt: skip
    back = NodeOptions.from_follower_json(options.follower_json())
    assert back.source == "fleet" and back.config is None
    for name in ("node", "etcd", "state_dir", "etcd_cacert", "etcd_cert", "etcd_key", "workers",
                 "pin_dir", "capture"):  # fmt: skip
        assert getattr(back, name) == getattr(options, name), name
    with pytest.raises(ModeConflict, match="got both"):
        NodeOptions.from_follower_json(options.follower_json().replace('"config": null',
                                                                       '"config": "/m.yaml"'))  # fmt: skip


# -- fleet mode: the state dir `zt node join` writes, the feed from etcd -----------------------------
def _joined(tmp_path: Path, endpoints: list[str], prefix: str, *, cacert: Path | None = None,
            password: str = "pw-n1") -> Path:  # fmt: skip
    """A state dir as `zt node join` leaves it for node n1 (node cert from a local CA)."""
    ca = CertificateAuthority.init(tmp_path / "ca", "example.org")
    node = ca.issue(csr.node_identity("example.org", "n1"), now=time.time())
    state = tmp_path / "state"
    NodeState.write(
        state, node_key_pem=node.key_pem, node_cert_pem=node.cert_pem, bundle_pem=ca.roots_pem,
        endpoints=tuple(endpoints), cacert=cacert, user=acl.node_user("n1"), password=password,
        prefix=prefix,
    )  # fmt: skip
    return state


def _fleet_options(state: Path, endpoints: list[str] | tuple[str, ...]) -> NodeOptions:
    return NodeOptions(node="n1", etcd=tuple(endpoints), state_dir=state, pin_dir=None)


def test_fleet_mode_refuses_another_nodes_state_dir(tmp_path: Path) -> None:
    state = _joined(tmp_path, [ETCD], "/zt")
    with pytest.raises(WrongNode) as info:
        preflight(dataclasses.replace(_fleet_options(state, [ETCD]), node="n2"))
    assert str(info.value).startswith("--node: got 'n2', expected 'n1' ")
    preflight(_fleet_options(state, [ETCD]))  # its own: fine
    code, lines = _run("--etcd", ETCD, "--state-dir", str(tmp_path / "nowhere"))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("zt: --state-dir: ")


def test_fleet_node_starts_from_its_mesh_cache_while_etcd_is_down(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens: refused at once
    state = _joined(tmp_path, [closed], "/zt")
    options = _fleet_options(state, [closed])
    with pytest.raises(EtcdUnavailable):  # no cache yet: a node never starts on nothing
        run(open_config(options, Registry()))
    cached = load_file(EXAMPLE)
    (state / "mesh.json").write_text(json.dumps(document(cached, with_identity=False)))
    feed = run(open_config(options, Registry()))
    assert len(feed.store.current.workloads) == len(cached.workloads)
    assert feed.status()["synced"] is False
    assert (feed.describe() or "").startswith("mesh not synced with etcd")
    follower = open_follower_config(options)  # followers read the same cache, never etcd
    assert follower.path == state / "mesh.json"
    assert len(follower.store.current.workloads) == len(cached.workloads)


def test_fleet_feed_follows_pushes(etcd_tls_auth: EtcdCluster, tmp_path: Path) -> None:
    assert etcd_tls_auth.tls is not None
    prefix = unique_prefix("run").decode().rstrip("/")
    endpoints = etcd_tls_auth.endpoints
    state = _joined(tmp_path, endpoints, prefix, cacert=etcd_tls_auth.tls.ca)
    doc = yaml.safe_load(EXAMPLE.read_text())

    async def body() -> None:
        async with etcd_tls_auth.client() as root:
            await acl.node_role(root, prefix, "n1", "pw-n1")
            await push.push(root, prefix, EXAMPLE)
            registry = Registry()
            feed = await open_config(_fleet_options(state, endpoints), registry)
            assert len(feed.store.current.policies) == len(doc["policies"])
            tasks = [asyncio.ensure_future(r()) for r in feed.runners()]
            try:
                doc["policies"] = doc["policies"][1:]
                await push.push(root, prefix, MeshText(yaml.safe_dump(doc)))
                async with asyncio.timeout(5):
                    while len(feed.store.current.policies) != len(doc["policies"]):
                        await asyncio.sleep(0.02)
                assert feed.status()["synced"] is True and feed.describe() is None
                assert "zt_config_synced 1" in registry.render()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    run(body())
    cache = load_file(state / "mesh.json")  # what followers watch: the newest mesh
    assert len(cache.policies) == len(doc["policies"])
