"""Where a node's mesh config and certificates come from: the mode choice of `zt run`.

File mode (`--config`): the mesh file, polled by FileWatcher, and leaves signed by the CA directory
on this host. Fleet mode (`--etcd`): the mesh through EtcdMeshSource (zt/fleet/meshwatch.py) and
leaves from the signer through EtcdCertificateSource (zt/fleet/certsource.py), with the credentials
`zt node join` left in the state dir (zt/fleet/nodestate.py); docs/fleet.md.

The daemon and its followers only see a `ConfigFeed` (a SnapshotStore plus what keeps it current)
and a `NodeCerts` (a CertificateManager plus what keeps its roots current).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zt.config import FileWatcher, SnapshotStore, load_file
from zt.config.watcher import file_signature
from zt.errors import UsageError, ZtError
from zt.fleet.certsource import EtcdCertificateSource, apply_bundle
from zt.fleet.connect import EtcdSettings
from zt.fleet.meshwatch import EtcdMeshSource
from zt.fleet.nodestate import NodeState
from zt.identity.ca import CertificateAuthority
from zt.identity.errors import CaExists, CaNotFound
from zt.identity.manager import CertificateManager
from zt.node.options import NodeOptions
from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.node")

Runner = Callable[[], Coroutine[Any, Any, None]]  # a background loop, started by the daemon
INITIAL_TIMEOUT = 10.0  # seconds for the first mesh list; then the mesh cache, or an error


class CaMissing(UsageError):
    """File mode never creates a CA silently: a node with its own CA is trusted by no other node."""

    reason = "ca_not_found"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(
            f"--ca-dir: no CA in {directory} (expected ca.pem and ca.key); create one with "
            f"`zt ca init --ca-dir {directory}`, or pass --init-ca to create one on this node "
            "(other nodes will not trust it unless they share it)"
        )


class ConfigFeed(Protocol):
    """A node's SnapshotStore and the loops that keep it current."""

    store: SnapshotStore

    def runners(self) -> list[Runner]:
        """Started once the daemon subscribed to the store (no swap is missed before that)."""
        ...

    def poll(self) -> None:
        """A follower saw a newer config: catch up now if there is one."""
        ...

    def describe(self) -> str | None:
        """One line for the readiness body while the served config is not the newest."""
        ...

    def status(self) -> dict[str, object]:
        """For /config_dump's "config_source"."""
        ...


@dataclass
class NodeCerts:
    manager: CertificateManager
    runners: list[Runner] = field(default_factory=list)


# -- file mode ------------------------------------------------------------------------------------
class FileFeed:
    """The mesh file, reloaded once an edit settled (zt/config/watcher.py)."""

    def __init__(self, path: Path, interval: float) -> None:
        loaded = file_signature(path)  # before the load: an edit made after it is not lost
        self.store = SnapshotStore(load_file(path))
        self.path = path
        self.interval = interval
        # settle: a change is loaded at the second poll that finds it unchanged (a little under
        # one interval, as timers may fire a millisecond early)
        self.watcher = FileWatcher(path, self.store, settle=0.9 * interval, loaded=loaded)

    def runners(self) -> list[Runner]:
        return [lambda: self.watcher.run(self.interval)]

    def poll(self) -> None:
        self.watcher.poll()

    def describe(self) -> str | None:
        return self.store.describe()

    def status(self) -> dict[str, object]:
        return {"source": "file", "path": str(self.path)}


def load_ca(directory: Path, trust_domain: str, *, init: bool) -> CertificateAuthority:
    """The CA in `directory`; with `init` (--init-ca) one is created there when it has none."""
    try:
        return CertificateAuthority.load(directory)
    except CaNotFound:
        if not init:
            raise CaMissing(directory) from None
    try:
        ca = CertificateAuthority.init(directory, trust_domain)
    except CaExists:  # another node on this host created it meanwhile: share it
        return CertificateAuthority.load(directory)
    log.warning("created a CA in %s (--init-ca): only nodes sharing it trust this node", directory)
    return ca


def preflight(options: NodeOptions) -> None:
    """What refuses to start, checked before logging, BPF or sockets (one line, exit 2)."""
    if options.source == "file":
        if not options.init_ca:
            load_ca(options.ca_dir, options.trust_domain, init=False)
        return
    fleet_settings(options, load_state(options))


async def open_config(options: NodeOptions, registry: Registry) -> ConfigFeed:
    """The leader's config feed."""
    if options.config is not None:
        return FileFeed(options.config, options.config_poll)
    state = load_state(options)
    etcd = fleet_settings(options, state)
    source = EtcdMeshSource(
        etcd.client, etcd.prefix, registry=registry, cache=state.mesh_cache_path
    )
    try:
        first = await source.initial(INITIAL_TIMEOUT)
    except TimeoutError:  # no snapshot to serve: the node does not start (fail closed)
        raise FleetUnreachable(
            f"--etcd: no mesh from {', '.join(etcd.endpoints)} within {INITIAL_TIMEOUT:.0f}s and "
            f"no mesh cache at {state.mesh_cache_path}; expected a reachable etcd for a first start"
        ) from None
    return EtcdFeed(source, SnapshotStore(first))


def open_follower_config(options: NodeOptions) -> FileFeed:
    """A follower's: the mesh file, or in fleet mode the leader's mesh cache (the leader rewrites
    it with each new snapshot, so followers never ask etcd for config)."""
    if options.config is not None:
        return FileFeed(options.config, options.config_poll)
    return FileFeed(load_state(options).mesh_cache_path, options.config_poll)


async def open_certs(
    options: NodeOptions, registry: Registry, *, follower: bool = False
) -> NodeCerts:
    """The certificate manager (and, in fleet mode, the trust bundle watch)."""
    if options.source == "file":
        # followers never create: the leader did (or refused to start) before starting them
        init = options.init_ca and not follower
        ca = await asyncio.to_thread(load_ca, options.ca_dir, options.trust_domain, init=init)
        return NodeCerts(CertificateManager(ca))
    state = load_state(options)
    etcd = fleet_settings(options, state)
    source = EtcdCertificateSource(
        etcd.client, etcd.prefix, state.node, state.node_key_pem, state.node_cert_pem,
        roots_pem=state.bundle_pem, registry=registry,
    )  # fmt: skip
    manager = CertificateManager(source)
    # the leader keeps the state dir's bundle current (a restart while etcd is down has it)
    save = None if follower else state.save_bundle
    return NodeCerts(manager, [lambda: follow_bundle(source, manager, save)])


# -- fleet mode ------------------------------------------------------------------------------------
class WrongNode(UsageError):
    reason = "wrong_node"


class FleetUnreachable(ZtError):
    reason = "etcd_unavailable"


def load_state(options: NodeOptions) -> NodeState:
    """The state dir `zt node join` wrote, for the node `--node` names."""
    state = NodeState.load(options.state_dir)
    if state.node != options.node:
        raise WrongNode(
            f"--node: got {options.node!r}, expected {state.node!r} (the node that joined with "
            f"--state-dir {options.state_dir})"
        )
    return state


def fleet_settings(options: NodeOptions, state: NodeState) -> EtcdSettings:
    """The state dir's etcd settings, its endpoints and TLS files overridden by the flags."""
    return EtcdSettings.from_options(
        ",".join(options.etcd or state.endpoints),
        cacert=options.etcd_cacert or state.cacert,
        cert=options.etcd_cert,
        key=options.etcd_key,
        user=state.user,
        password_file=state.password_file,
        prefix=state.prefix,
    )


class EtcdFeed:
    """The mesh from etcd; the store swaps as pushes arrive (zt/fleet/meshwatch.py)."""

    def __init__(self, source: EtcdMeshSource, store: SnapshotStore) -> None:
        self.source = source
        self.store = store

    def runners(self) -> list[Runner]:
        self.source.attach(self.store)
        return [self.source.run]

    def poll(self) -> None:
        """Followers watch the mesh cache this node writes: nothing newer to fetch here."""

    def describe(self) -> str | None:
        return self.source.describe() or self.store.describe()

    def status(self) -> dict[str, object]:
        return self.source.status()


async def follow_bundle(
    source: EtcdCertificateSource,
    manager: CertificateManager,
    save: Callable[[bytes], None] | None,
) -> None:
    """Each new trust bundle: roots swapped into every cached cert, leaves not under its first
    root renewed (a root rotation, zt/fleet/rotation.py); only the newest bundle is applied."""
    pending: asyncio.Queue[bytes] = asyncio.Queue()

    async def apply() -> None:
        while True:
            roots = await pending.get()
            while not pending.empty():
                roots = pending.get_nowait()
            try:
                if save is not None:
                    save(roots)
                renewed = await apply_bundle(manager, roots)
            except Exception:  # one bad bundle must not end the watch for the next ones
                log.exception("trust bundle generation %d not applied", source.generation)
                continue
            log.info("new trust bundle (generation %d): %d leaf(s) renewed", source.generation,
                     renewed)  # fmt: skip

    applier = asyncio.ensure_future(apply())
    try:
        await source.watch_bundle(pending.put_nowait)
    finally:
        applier.cancel()
        await source.close()  # its etcd connections (this loop runs as long as the node does)
