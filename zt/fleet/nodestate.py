"""A joined node's state directory (default /var/lib/zt/node; mode 0700), written by `zt node join`.

  node.key        the node key (0600): signs each CSR; never leaves the node
  node.pem        the node certificate the signer issued at join
  bundle.pem      the trust bundle (roots), refreshed by the node as {p}/ca/bundle changes
  etcd.json       {"endpoints", "cacert", "user", "prefix"}: how to reach etcd
  etcd.password   the node's etcd password (0600), generated on the node at join
  etcd-ca.pem     a copy of the etcd CA given at join (when any), so the directory stands alone
  mesh.json       the mesh cache the node's config watcher keeps (zt/fleet/meshwatch.py)
The node name and the trust domain are read from node.pem's identity, so they cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from zt.errors import ConfigError, FieldProblem, UsageError
from zt.fleet import csr
from zt.fleet.connect import EtcdSettings
from zt.identity._files import KEY_MODE, write_atomic
from zt.identity.certs import load_pem_certs, spiffe_ids, uri_sans
from zt.identity.errors import CertificateFileError

DEFAULT_DIR = Path("/var/lib/zt/node")
MESH_CACHE = "mesh.json"
T = TypeVar("T")
_FILES = ("node.key", "node.pem", "bundle.pem", "etcd.json", "etcd.password")


class NodeStateError(UsageError):
    reason = "node_state_invalid"


@dataclass(frozen=True)
class NodeState:
    directory: Path
    node: str
    trust_domain: str
    node_key_pem: bytes
    node_cert_pem: bytes
    bundle_pem: bytes
    endpoints: tuple[str, ...]
    cacert: Path | None
    user: str
    prefix: str

    @property
    def mesh_cache_path(self) -> Path:
        return self.directory / MESH_CACHE

    @property
    def password_file(self) -> Path:
        return self.directory / "etcd.password"

    @classmethod
    def write(
        cls,
        directory: Path,
        *,
        node_key_pem: bytes,
        node_cert_pem: bytes,
        bundle_pem: bytes,
        endpoints: tuple[str, ...],
        cacert: Path | None,
        user: str,
        password: str,
        prefix: str,
    ) -> NodeState:
        """Create (or replace, on a re-join) the state directory's files."""
        prepare(directory)
        copied: Path | None = None
        if cacert is not None:
            copied = directory / "etcd-ca.pem"
            try:
                write_atomic(copied, cacert.read_bytes())
            except OSError as exc:
                raise NodeStateError(f"--etcd-cacert: {cacert}: {exc.strerror}") from None
        write_atomic(directory / "node.key", node_key_pem, KEY_MODE)
        write_atomic(directory / "node.pem", node_cert_pem)
        write_atomic(directory / "bundle.pem", bundle_pem)
        write_atomic(directory / "etcd.password", password.encode(), KEY_MODE)
        doc = {
            "endpoints": list(endpoints),
            "cacert": None if copied is None else str(copied),
            "user": user,
            "prefix": prefix,
        }
        write_atomic(directory / "etcd.json", json.dumps(doc, indent=2).encode() + b"\n")
        return cls.load(directory)

    @classmethod
    def load(cls, directory: Path) -> NodeState:
        missing = [f for f in _FILES if not (directory / f).exists()]
        if missing:
            raise NodeStateError(
                f"--state-dir: {directory} has no {', '.join(missing)}; "
                "run `zt node join --state-dir` with a token from `zt ca token create` first"
            )
        try:
            key, cert = (directory / "node.key").read_bytes(), (directory / "node.pem").read_bytes()
            bundle = (directory / "bundle.pem").read_bytes()
            doc = json.loads((directory / "etcd.json").read_text())
        except (OSError, ValueError) as exc:
            raise NodeStateError(f"--state-dir: {directory}: unreadable ({exc})") from None
        node, td = _identity(cert, directory)
        return cls(
            directory=directory,
            node=node,
            trust_domain=td,
            node_key_pem=key,
            node_cert_pem=cert,
            bundle_pem=bundle,
            endpoints=tuple(_field(doc, "endpoints", list, directory)),
            cacert=None if doc.get("cacert") is None else Path(str(doc["cacert"])),
            user=_field(doc, "user", str, directory),
            prefix=_field(doc, "prefix", str, directory),
        )

    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise NodeStateError(f"{self.password_file}: {exc.strerror}") from None

    def settings(self) -> EtcdSettings:
        """How this node reaches etcd (as its own user; the password is read now)."""
        return EtcdSettings(
            self.endpoints,
            cacert=self.cacert,
            user=self.user,
            password=self.password(),
            prefix=self.prefix,
        )

    def save_bundle(self, roots_pem: bytes) -> None:
        """Keep the newest bundle on disk: a node restarted while etcd is down still has it."""
        write_atomic(self.directory / "bundle.pem", roots_pem)


def prepare(directory: Path) -> None:
    """The state dir exists, mode 0700 (it holds the node key and etcd password), and is writable:
    checked before a join spends its token, so a failed write cannot lose the credentials."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        probe = directory / ".zt-write-probe"
        probe.touch(mode=0o600)
        probe.unlink()
    except OSError as exc:
        raise NodeStateError(
            f"--state-dir: {directory}: {exc.strerror}; expected a directory zt can write"
        ) from None


def _identity(cert_pem: bytes, directory: Path) -> tuple[str, str]:
    what = str(directory / "node.pem")
    try:
        ids = spiffe_ids(uri_sans(load_pem_certs(cert_pem, what=what)[0]))
    except CertificateFileError as exc:
        raise NodeStateError(str(exc)) from None
    if len(ids) != 1 or not csr.is_node_identity(ids[0]):
        raise NodeStateError(f"{what}: expected a node identity .../ns/zt-system/sa/zt-node-NAME")
    return ids[0].service_account.removeprefix(csr.NODE_SA_PREFIX), ids[0].trust_domain


def _field(doc: object, name: str, kind: type[T], directory: Path) -> T:
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        path = str(directory / "etcd.json")
        raise ConfigError(path, [FieldProblem(name, value, f"a {kind.__name__}")])
    return value
