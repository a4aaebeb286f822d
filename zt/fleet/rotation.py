"""Root CA rotation without a failed handshake (docs/fleet.md): introduce, switch, retire.

1. introduce (`zt ca rotate`): a new root is created next to the signing one; the bundle becomes
   [old, new]. Nodes get it from {p}/ca/bundle and trust both; the signer still signs with old.
2. switch, switch_after after the [old, new] bundle was first put in etcd (nodes have it by then;
   counted from the put, not from introduce: a bundle that could not be published while etcd or the
   signer was down gives nodes no head start): the signer signs with the new root; the bundle
   becomes [new, old] (a new generation: nodes renew leaves not under the first root at once, so
   they move to the new root without waiting for half-life).
3. retire, at switched + the longest leaf lifetime (the last old-root leaf has expired by then): the
   bundle becomes [new]; the old key is archived.

`plan(state, now)` is the whole schedule (pure). The rest applies an action to the CA directory:
  ca.pem/ca.key        the signing root      next.pem/next.key        introduced, not signing yet
  bundle.pem           roots, in order       retiring.pem/retiring.key the old root after a switch
  rotation.json        RotationState         archive/                  retired roots and keys
A signer restarted mid-rotation reads rotation.json and carries on; each step is idempotent.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zt.errors import ZtError
from zt.fleet import keys
from zt.fleet.csr import is_node_identity
from zt.fleet.etcd import Compare, EtcdClient, Put
from zt.identity._files import KEY_MODE, write_atomic
from zt.identity.ca import CertificateAuthority, key_pem, new_root
from zt.identity.certs import fingerprint
from zt.identity.spiffe import SpiffeId

Phase = Literal["introduced", "switched"]
Action = Literal["switch", "retire"]
STATE_FILE = "rotation.json"
_PEM = serialization.Encoding.PEM


class RotationError(ZtError):
    reason = "rotation_error"
    exit_code = 2


@dataclass(frozen=True)
class RotationState:
    phase: Phase
    introduced: float
    switch_after: float
    switched: float | None = None
    leaf_lifetime: float = 0.0  # the longest leaf lifetime signed under the old root
    published: float | None = None  # when etcd first held a bundle with the introduced root
    # the operator's `zt ca rotate --retire-after`: retire this long after the switch instead of
    # when the last old-root leaf in the CA's log expires (nodes renew at the switch anyway)
    retire_after: float | None = None

    @property
    def switch_at(self) -> float | None:
        return None if self.published is None else self.published + self.switch_after

    @property
    def retire_at(self) -> float | None:
        return None if self.switched is None else self.switched + self.leaf_lifetime


def plan(state: RotationState | None, now: float) -> list[Action]:
    """What is due at `now`. Nothing switches before the new root was published (nodes could not
    have it); a signer that was down past both deadlines switches now and retires one leaf lifetime
    later (leaves it signed before going down may still be valid until then)."""
    if state is None:
        return []
    if state.phase == "introduced":
        switch_at = state.switch_at
        return ["switch"] if switch_at is not None and now >= switch_at else []
    retire_at = state.retire_at
    return ["retire"] if retire_at is not None and now >= retire_at else []


def next_deadline(state: RotationState | None) -> float | None:
    if state is None:
        return None
    return state.switch_at if state.phase == "introduced" else state.retire_at


def switched(state: RotationState, now: float, leaf_lifetime: float) -> RotationState:
    return replace(state, phase="switched", switched=now, leaf_lifetime=leaf_lifetime)


# --- the CA directory ---------------------------------------------------------------------------


def read_state(ca_dir: Path) -> RotationState | None:
    path = ca_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return RotationState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise RotationError(
            f"{path}: unreadable rotation state ({exc}); fix or remove it"
        ) from None


def _write_state(ca_dir: Path, state: RotationState) -> None:
    write_atomic(ca_dir / STATE_FILE, json.dumps(asdict(state), sort_keys=True).encode())


def split_pem(data: bytes) -> list[bytes]:
    """Each certificate of a PEM bundle, in order, as its own PEM."""
    return [c.public_bytes(_PEM) for c in x509.load_pem_x509_certificates(data)]


def bundle_roots(ca_dir: Path) -> list[bytes]:
    """The roots peers must trust now, in order (the signing root first once switched)."""
    path = ca_dir / "bundle.pem"
    try:
        return split_pem(path.read_bytes())
    except OSError as exc:
        raise RotationError(f"{path}: {exc.strerror}; expected the CA's trust bundle") from None
    except ValueError as exc:
        raise RotationError(f"{path}: expected PEM certificates ({exc})") from None


def mark_published(ca_dir: Path, roots: tuple[bytes, ...] | list[bytes], now: float) -> None:
    """Start the switch countdown the first time etcd holds a bundle with the introduced root."""
    state = read_state(ca_dir)
    nxt = ca_dir / "next.pem"
    if state is None or state.phase != "introduced" or state.published is not None:
        return
    try:
        introduced = split_pem(nxt.read_bytes())[:1] if nxt.exists() else []
    except (OSError, ValueError) as exc:
        raise RotationError(f"{nxt}: expected the introduced root's PEM ({exc})") from None
    if introduced and introduced[0] in roots:
        _write_state(ca_dir, replace(state, published=now))


def _fp(pem: bytes) -> str:
    return fingerprint(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))


def introduce(
    ca_dir: Path,
    *,
    switch_after: float,
    now: float | None = None,
    retire_after: float | None = None,
) -> RotationState:
    """Step 1: a new root in next.*, bundle.pem = [old, new]. Refuses while a rotation runs."""
    now = time.time() if now is None else now
    ca = CertificateAuthority.load(ca_dir)
    if read_state(ca_dir) is not None:
        raise RotationError(
            f"{ca_dir}: a rotation is already in progress ({STATE_FILE}); wait for it to finish"
        )
    if ca.leaf_chain_pem:
        raise RotationError(f"{ca_dir}: an operator's intermediate CA is not rotated by zt")
    label = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    key, cert = new_root(ca.trust_domain, now, label=label)
    write_atomic(ca_dir / "next.key", key_pem(key), KEY_MODE)
    write_atomic(ca_dir / "next.pem", cert.public_bytes(_PEM))
    old = split_pem(ca.roots_pem)
    write_atomic(ca_dir / "bundle.pem", b"".join([*old, cert.public_bytes(_PEM)]))
    state = RotationState("introduced", now, switch_after, retire_after=retire_after)
    _write_state(ca_dir, state)
    return state


def switch(ca_dir: Path, state: RotationState, *, now: float, leaf_lifetime: float) -> None:
    """Step 2: the old root moves to retiring.*, next.* becomes ca.*, bundle.pem = [new, old]."""
    nxt = ca_dir / "next.pem"
    if nxt.exists():
        if not (ca_dir / "retiring.pem").exists():  # key first: a crash leaves no lone retiring.pem
            write_atomic(ca_dir / "retiring.key", (ca_dir / "ca.key").read_bytes(), KEY_MODE)
            write_atomic(ca_dir / "retiring.pem", (ca_dir / "ca.pem").read_bytes())
        write_atomic(ca_dir / "ca.key", (ca_dir / "next.key").read_bytes(), KEY_MODE)
        write_atomic(ca_dir / "ca.pem", nxt.read_bytes())
        (ca_dir / "next.key").unlink()
        nxt.unlink()
    new, old = (ca_dir / "ca.pem").read_bytes(), (ca_dir / "retiring.pem").read_bytes()
    write_atomic(ca_dir / "bundle.pem", new + old)
    _write_state(
        ca_dir, switched(state, now, _old_root_lifetime(ca_dir, state, now, leaf_lifetime))
    )


def _old_root_lifetime(
    ca_dir: Path, state: RotationState, now: float, leaf_lifetime: float
) -> float:
    """How long after the switch the old root stays trusted. Every workload leaf in the CA's log so
    far came from the old root: by default it is retired only once the last of them expired, also
    when the signer ran with a longer --leaf-lifetime before this switch. Node certificates are
    left out: they only prove who signs a CSR, and no peer verifies their chain."""
    if state.retire_after is not None:
        return state.retire_after
    workload_leaves = (
        r.not_after
        for r in CertificateAuthority.load(ca_dir).issued()
        if not is_node_identity(SpiffeId.parse(r.identity))
    )
    return max(leaf_lifetime, max(workload_leaves, default=now) - now)


def retire(ca_dir: Path) -> None:
    """Step 3: bundle.pem = [new]; the old root and key go to archive/<fingerprint>.*."""
    write_atomic(ca_dir / "bundle.pem", (ca_dir / "ca.pem").read_bytes())
    old = ca_dir / "retiring.pem"
    if old.exists():
        archive = ca_dir / "archive"
        archive.mkdir(mode=0o700, exist_ok=True)
        stem = _fp(old.read_bytes()).replace(":", "")[:16]
        (ca_dir / "retiring.key").replace(archive / f"{stem}.key")
        old.replace(archive / f"{stem}.pem")
    (ca_dir / STATE_FILE).unlink(missing_ok=True)


def apply(ca_dir: Path, action: Action, *, now: float, leaf_lifetime: float) -> None:
    """Apply one planned action (re-reading the state: the file is the truth)."""
    state = read_state(ca_dir)
    if state is None:
        return
    if action == "switch" and state.phase == "introduced":
        switch(ca_dir, state, now=now, leaf_lifetime=leaf_lifetime)
    elif action == "retire" and state.phase == "switched":
        retire(ca_dir)


# --- the published bundle: {p}/ca/bundle -------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    trust_domain: str
    roots: tuple[bytes, ...]
    generation: int

    @property
    def roots_pem(self) -> bytes:
        return b"".join(self.roots)

    def to_doc(self) -> dict[str, object]:
        roots = [r.decode("ascii") for r in self.roots]
        return {"trust_domain": self.trust_domain, "roots": roots, "generation": self.generation}

    def to_json(self) -> bytes:
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_doc(cls, doc: object) -> Bundle:
        try:
            assert isinstance(doc, dict)
            roots = tuple(str(r).encode("ascii") for r in doc["roots"])
            for r in roots:
                x509.load_pem_x509_certificate(r)
            return cls(str(doc["trust_domain"]), roots, int(doc["generation"]))
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise RotationError(
                f"trust bundle: expected {{trust_domain, roots: [PEM], generation}} ({exc})"
            ) from None

    @classmethod
    def from_json(cls, data: bytes) -> Bundle:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise RotationError(f"trust bundle: not JSON ({exc})") from None
        return cls.from_doc(doc)


async def publish_bundle(
    client: EtcdClient, prefix: str, trust_domain: str, roots: list[bytes]
) -> Bundle:
    """Put the bundle with generation + 1 (unchanged roots: no write). Guarded by the key's
    mod revision, so two writers never lose a generation; retried on a lost race."""
    key = keys.bundle_key(prefix)
    for _ in range(5):
        kv = await client.get(key)
        old = None if kv is None else _parsed_or_none(kv.value)
        if old is not None and list(old.roots) == roots and old.trust_domain == trust_domain:
            return old
        new = Bundle(trust_domain, tuple(roots), 1 if old is None else old.generation + 1)
        mod = 0 if kv is None else kv.mod_revision
        guard = Compare(key, "mod", "equal", mod)
        if (await client.txn([guard], [Put(key, new.to_json())])).succeeded:
            return new
    raise RotationError(f"{key.decode()}: changed under us 5 times in a row; try again")


def _parsed_or_none(value: bytes) -> Bundle | None:
    """A bundle someone broke is replaced (the CA dir is the truth), its generation restarting."""
    try:
        return Bundle.from_json(value)
    except RotationError:
        return None
