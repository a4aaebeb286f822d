"""`zt config push|get|diff` against etcd: the mesh file <-> the objects under {p}/mesh/.

A push validates the file exactly as `zt config check` does, reads the mesh range (revision R),
and writes the difference in ONE txn guarded by two compares:
- every key in {p}/mesh/ has mod_revision < R+1: nothing was added or changed since the read;
- {p}/meta/mesh-push has mod_revision < R+1: no other push committed since the read. Every push
  rewrites that key, so this also catches a push that only deleted (a deleted key leaves nothing
  for the range compare to see).
Two pushes prepared on the same revision: exactly one commits, the other gets PushConflict. The
marker holds a random push id, so a txn the client retried on another member after it had in fact
applied is recognised as ours, not reported as a conflict.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zt.config.loader import (
    MAX_FILE_BYTES,
    ConfigTooLarge,
    ConfigUnreadable,
    parse_text,
    read_bounded,
)
from zt.errors import FieldProblem, ZtError
from zt.fleet import keys, meshdoc
from zt.fleet.etcd import Compare, Delete, EtcdClient, Put, prefix_end
from zt.fleet.etcderrors import EtcdRequestError
from zt.fleet.meshdoc import MeshDiff


class PushConflict(ZtError):
    """The mesh changed between the read and the txn of a push. Distinct exit code: retryable."""

    reason = "push_conflict"
    exit_code = 3

    def __init__(self, read_revision: int, now: int) -> None:
        self.read_revision, self.now = read_revision, now
        super().__init__(
            f"conflict: the mesh changed while this push was prepared (read at revision "
            f"{read_revision}, now {now}); run `zt config diff` and push again"
        )


class PushTooLarge(ZtError):
    """etcd refused the txn for its size (its --max-txn-ops / --max-request-bytes)."""

    reason = "push_too_large"

    def __init__(self, ops: int, size: int, message: str) -> None:
        super().__init__(
            f"etcd refused the push ({message}): one txn of {ops} operations, {size} bytes; "
            "raise --max-txn-ops (default 128) / --max-request-bytes (default 1.5 MiB) on every "
            "etcd member, or push the change in smaller steps"
        )


@dataclass(frozen=True)
class MeshText:
    """A mesh document given as text (stdin); `source` names it in errors."""

    text: str
    source: str = "<stdin>"


MeshInput = Path | MeshText


def read_input(file: str) -> MeshInput:
    """A FILE argument: `-` is stdin, read now with the file loader's size cap and errors."""
    return _read_stdin() if file == "-" else Path(file)


def _read_stdin(source: str = "<stdin>") -> MeshText:
    try:
        raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            problem = FieldProblem(
                "(file)", f"more than {MAX_FILE_BYTES} bytes", f"at most {MAX_FILE_BYTES}"
            )
            raise ConfigTooLarge(source, [problem])
        return MeshText(raw.decode("utf-8"), source)
    except (OSError, UnicodeDecodeError) as exc:
        problem = FieldProblem("(file)", source, f"readable UTF-8 text ({exc})")
        raise ConfigUnreadable(source, [problem]) from None


def load_objects(prefix: str, mesh: MeshInput) -> dict[bytes, bytes]:
    """The mesh's objects as keys/values; ConfigError exactly as `zt config check` reports it."""
    if isinstance(mesh, MeshText):
        text, source = mesh.text, mesh.source
    else:
        text, source = read_bounded(mesh), str(mesh)
    return meshdoc.encode(prefix, parse_text(text, source), source)


async def read_objects(client: EtcdClient, prefix: str) -> tuple[dict[bytes, bytes], int]:
    """Every key/value under {p}/mesh/ and the revision they were read at."""
    start = keys.mesh_prefix(prefix)
    kvs, revision = await client.range(start, prefix_end(start))
    return {kv.key: kv.value for kv in kvs}, revision


@dataclass(frozen=True)
class Prepared:
    prefix: str
    objects: dict[bytes, bytes]
    read_revision: int
    diff: MeshDiff


@dataclass(frozen=True)
class PushResult:
    revision: int  # the txn's revision; the read revision when nothing changed
    diff: MeshDiff


async def prepare(client: EtcdClient, prefix: str, objects: dict[bytes, bytes]) -> Prepared:
    current, revision = await read_objects(client, prefix)
    return Prepared(prefix, objects, revision, meshdoc.diff(current, objects))


def _ops(prepared: Prepared, marker: bytes) -> list[Put | Delete]:
    d = prepared.diff
    ops: list[Put | Delete] = [Put(k, prepared.objects[k]) for k in (*d.added, *d.changed)]
    ops += [Delete(k) for k in d.removed]
    ops.append(Put(keys.mesh_push_key(prepared.prefix), marker))
    return ops


async def commit(
    client: EtcdClient, prepared: Prepared, *, wall: float | None = None
) -> PushResult:
    """Write the prepared difference in one guarded txn (nothing when there is none)."""
    if prepared.diff.empty:
        return PushResult(prepared.read_revision, prepared.diff)
    read, p = prepared.read_revision, prepared.prefix
    marker = meshdoc.canonical({
        "push_id": secrets.token_hex(8),
        "read_revision": read,
        "objects": len(prepared.objects),
        "change": prepared.diff.summary(),
        "at": time.time() if wall is None else wall,
    })  # fmt: skip
    mesh, marker_key = keys.mesh_prefix(p), keys.mesh_push_key(p)
    guard = [
        Compare(mesh, "mod", "less", read + 1, range_end=prefix_end(mesh)),
        Compare(marker_key, "mod", "less", read + 1),
    ]
    ops = _ops(prepared, marker)
    try:
        result = await client.txn(guard, ops)
    except EtcdRequestError as exc:
        if "too many operations" in exc.message or "too large" in exc.message:
            size = sum(len(o.key) + len(getattr(o, "value", b"")) for o in ops)
            raise PushTooLarge(len(ops), size, exc.message) from None
        raise
    if result.succeeded:
        return PushResult(result.revision, prepared.diff)
    mine = await client.get(marker_key)
    if mine is not None and mine.value == marker:  # applied; the client retried it elsewhere
        return PushResult(mine.mod_revision, prepared.diff)
    raise PushConflict(read, result.revision)


async def push(client: EtcdClient, prefix: str, mesh: MeshInput) -> PushResult:
    """Validate, diff against etcd, write the difference atomically."""
    objects = load_objects(prefix, mesh)
    return await commit(client, await prepare(client, prefix, objects))


async def get(client: EtcdClient, prefix: str) -> tuple[dict[str, list[object]], int]:
    """The mesh in etcd as a document, and its revision. Refuses (EtcdBadObject, ...) a mesh a
    node would refuse."""
    objects, revision = await read_objects(client, prefix)
    meshdoc.decode(prefix, objects)
    return meshdoc.document_of(prefix, objects), revision


async def diff(client: EtcdClient, prefix: str, mesh: MeshInput) -> MeshDiff:
    """What pushing `mesh` would change."""
    objects = load_objects(prefix, mesh)
    current, _ = await read_objects(client, prefix)
    return meshdoc.diff(current, objects)
