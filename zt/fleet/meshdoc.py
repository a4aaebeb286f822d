"""A mesh document <-> one etcd key per object (pure): encode, decode with per-key errors, diff.

`encode` turns a mesh document (as parsed from YAML/JSON) into `{key: canonical JSON}`, one
workload, service or policy per key (zt/fleet/keys.py), camelCase as in the mesh file, defaults
left out so a round trip is stable. `MeshDecoder.decode` does the reverse on a node: each object is
validated with the same pydantic model the file loader uses (a problem is reported as
`<key>: <field path>: got ..., expected ...`), then the whole-document cross-check runs exactly as
for a file, so `zt config push` and a node accept the same documents. The decoder keeps each good
object (validated and converted) keyed by its bytes: a node with thousands of workloads re-validates
only the objects an update touched.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from zt.config import convert
from zt.config.crosscheck import cross_check
from zt.config.loader import load_document, parse_text, validation_problems
from zt.config.schema import MeshFile, PolicyModel, ServiceModel, WorkloadModel
from zt.errors import MAX_PROBLEMS_SHOWN, ConfigError, FieldProblem
from zt.fleet import keys
from zt.state.model import Policy, Service, Workload
from zt.state.snapshot import Snapshot

_SECTIONS = ("workloads", "services", "policies")
_MODELS: dict[str, type[BaseModel]] = {
    "workload": WorkloadModel,
    "service": ServiceModel,
    "policy": PolicyModel,
}
KEY_FORMS = (
    "{p}/mesh/workloads/{uid}, {p}/mesh/services/{ns}/{name} or {p}/mesh/policies/{ns}/{name}"
)


class _KeyedProblems(ConfigError):
    """Problems each found at an etcd key: `key` is the first key, `keys` every one; the message
    is `head`, then one `<key>: <problem>` line per problem (at most MAX_PROBLEMS_SHOWN)."""

    def __init__(self, bad: Sequence[tuple[str, FieldProblem]], head: str) -> None:
        self.keys = tuple(dict.fromkeys(k for k, _ in bad))
        self.key = self.keys[0]
        self.source = self.key
        self.problems = tuple(p for _, p in bad)
        shown = bad[:MAX_PROBLEMS_SHOWN]
        lines = [head, *(f"  {k}: {p}" for k, p in shown)]
        if len(bad) > len(shown):
            lines.append(f"  ... and {len(bad) - len(shown)} more problem(s) not shown")
        Exception.__init__(self, "\n".join(lines))


class EtcdBadObject(_KeyedProblems):
    """One or more objects under the mesh prefix do not validate. `key`: the first bad key;
    `keys`: every bad key; each problem line names its key and field path."""

    reason = "etcd_bad_object"

    def __init__(self, bad: Sequence[tuple[str, FieldProblem]]) -> None:
        bad_keys = len(dict.fromkeys(k for k, _ in bad))
        head = (
            f"{bad[0][0]}: {len(bad)} problem(s)"
            if bad_keys == 1
            else f"{bad_keys} bad objects in etcd, {len(bad)} problem(s)"
        )
        super().__init__(bad, head)


def canonical(obj: object) -> bytes:
    """The one byte form of a JSON object: sorted keys, compact, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=True)


# --- encode ---------------------------------------------------------------------------------------


def _keyed(prefix: str, mesh: MeshFile) -> list[tuple[str, bytes, BaseModel]]:
    """Each object with its place in the file and its key."""
    out: list[tuple[str, bytes, BaseModel]] = []
    for i, w in enumerate(mesh.workloads):
        out.append((f"workloads[{i}]", keys.workload_key(prefix, w.uid), w))
    for i, s in enumerate(mesh.services):
        out.append((f"services[{i}]", keys.service_key(prefix, s.namespace, s.name), s))
    for i, p in enumerate(mesh.policies):
        out.append((f"policies[{i}]", keys.policy_key(prefix, p.namespace, p.name), p))
    return out


def encode(prefix: str, document: object, source: str = "<document>") -> dict[bytes, bytes]:
    """Validate `document` exactly as `zt config check` does (ConfigError otherwise), then one
    canonical JSON value per object. A service's key is its namespace/name, which a file does not
    have to keep unique (the loader keys services by hostname): two services sharing one is
    refused here, naming both."""
    load_document(document, source)
    mesh = MeshFile.model_validate(document)
    out: dict[bytes, bytes] = {}
    owner: dict[bytes, str] = {}
    problems: list[FieldProblem] = []
    for where, key, model in _keyed(prefix, mesh):
        if key in owner:
            expected = f"a unique namespace/name: it is the etcd key (also {owner[key]})"
            problems.append(FieldProblem(f"{where}.name", getattr(model, "name", ""), expected))
            continue
        owner[key] = where
        out[key] = canonical(_dump(model))
    if problems:
        raise ConfigError(source, problems)
    return out


# --- decode ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Good:
    """A validated object and its data-path form."""

    kind: str
    model: BaseModel
    domain: Workload | Service | Policy


def _identity_problems(parsed: keys.ParsedKey, model: BaseModel) -> list[FieldProblem]:
    """The object must be the one its key names (else one object could sit under two keys)."""
    if isinstance(model, WorkloadModel):
        (uid,) = parsed.parts
        ok = model.uid == uid
        return [] if ok else [FieldProblem("uid", model.uid, f"{uid!r}, the uid its key names")]
    ns, name = parsed.parts
    problems = []
    if getattr(model, "namespace", None) != ns:
        problems.append(
            FieldProblem("namespace", getattr(model, "namespace", None), f"{ns!r} (its key)")
        )
    if getattr(model, "name", None) != name:
        problems.append(FieldProblem("name", getattr(model, "name", None), f"{name!r} (its key)"))
    return problems


def _domain(model: BaseModel) -> Workload | Service | Policy:
    if isinstance(model, WorkloadModel):
        return convert.workload(model)
    if isinstance(model, ServiceModel):
        return convert.service(model)
    assert isinstance(model, PolicyModel)
    return convert.policy(model)


def decode_object(prefix: str, key: bytes, value: bytes) -> _Good | list[FieldProblem]:
    """One key's value: the validated object, or every problem with its field path."""
    parsed = keys.parse(prefix, key)
    if parsed is None or parsed.kind not in _MODELS:
        return [FieldProblem("(key)", key.decode(errors="replace"), KEY_FORMS)]
    try:
        data = parse_text(value.decode("utf-8"), "object.json")
    except UnicodeDecodeError:
        return [FieldProblem("(value)", value[:40], "UTF-8 JSON")]
    except ConfigError as exc:
        return list(exc.problems)
    if not isinstance(data, dict):
        return [FieldProblem("(value)", data, f"a JSON object (one {parsed.kind})")]
    try:
        model = _MODELS[parsed.kind].model_validate(data)
    except ValidationError as exc:
        return validation_problems(exc)
    problems = _identity_problems(parsed, model)
    return problems or _Good(parsed.kind, model, _domain(model))


_INDEXED = re.compile(r"^(workloads|services|policies)\[(\d+)\]\.?(.*)$", re.S)


def _at_key(problem: FieldProblem, names: Mapping[str, Sequence[str]]) -> tuple[str, FieldProblem]:
    """A cross-check problem's `workloads[3].x` path, re-said as `<key>: x`."""
    m = _INDEXED.match(problem.path)
    if m is None:
        return "(mesh)", problem
    key = names[m.group(1)][int(m.group(2))]
    return key, FieldProblem(m.group(3) or "(object)", problem.value, problem.expected)


class EtcdMeshInvalid(_KeyedProblems):
    """Every object is valid alone, but the whole mesh is not (a duplicate address, a reference
    to a missing service, ...): each problem names the key it is about."""

    reason = "etcd_mesh_invalid"

    def __init__(self, bad: Sequence[tuple[str, FieldProblem]]) -> None:
        super().__init__(bad, f"the mesh in etcd is inconsistent: {len(bad)} problem(s)")


@dataclass
class MeshDecoder:
    """Decodes the mesh prefix's key/values into a Snapshot, reusing each object whose bytes did
    not change since the last decode. Not thread-safe; one per watcher."""

    prefix: str
    _cache: dict[bytes, tuple[bytes, _Good]] = field(default_factory=dict)
    validated: int = 0  # objects validated by the last decode (the rest came from the cache)

    def decode(self, objects: Mapping[bytes, bytes]) -> Snapshot:
        """EtcdBadObject (naming each bad key and field), EtcdMeshInvalid (whole-mesh problems
        by key), or the snapshot. The cache keeps only the keys of this call's `objects`."""
        cache: dict[bytes, tuple[bytes, _Good]] = {}
        bad: list[tuple[str, FieldProblem]] = []
        self.validated = 0
        for key in sorted(objects):
            value = objects[key]
            hit = self._cache.get(key)
            if hit is not None and hit[0] == value:
                cache[key] = hit
                continue
            self.validated += 1
            got = decode_object(self.prefix, key, value)
            if isinstance(got, _Good):
                cache[key] = (value, got)
            else:
                bad.extend((key.decode(errors="replace"), p) for p in got)
        self._cache = cache  # good objects present now: removed keys leave, bad ones retry
        if bad:
            raise EtcdBadObject(bad)
        return self._assemble(cache)

    def _assemble(self, cache: Mapping[bytes, tuple[bytes, _Good]]) -> Snapshot:
        by_kind: dict[str, list[tuple[bytes, _Good]]] = {k: [] for k in _MODELS}
        for key, (_, good) in cache.items():  # sorted by key: decode() filled it in order
            by_kind[good.kind].append((key, good))
        lists = [by_kind["workload"], by_kind["service"], by_kind["policy"]]
        mesh = MeshFile.model_construct(
            workloads=[g.model for _, g in lists[0]],
            services=[g.model for _, g in lists[1]],
            policies=[g.model for _, g in lists[2]],
        )
        problems = cross_check(mesh)
        if problems:
            names = {
                s: [k.decode() for k, _ in lst] for s, lst in zip(_SECTIONS, lists, strict=True)
            }
            raise EtcdMeshInvalid([_at_key(p, names) for p in problems])
        return Snapshot.build(
            cast(tuple[Workload, ...], tuple(g.domain for _, g in lists[0])),
            cast(tuple[Service, ...], tuple(g.domain for _, g in lists[1])),
            cast(tuple[Policy, ...], tuple(g.domain for _, g in lists[2])),
        )


def decode(prefix: str, objects: Mapping[bytes, bytes]) -> Snapshot:
    return MeshDecoder(prefix).decode(objects)


def document_of(prefix: str, objects: Mapping[bytes, bytes]) -> dict[str, list[object]]:
    """The mesh document the objects spell (in key order), for `zt config get`: each object as
    stored, port-map keys back to numbers. Decode first: this trusts the values."""
    out: dict[str, list[object]] = {s: [] for s in _SECTIONS}
    section = dict(zip(_MODELS, _SECTIONS, strict=True))
    for key in sorted(objects):
        parsed = keys.parse(prefix, key)
        if parsed is not None and parsed.kind in section:
            out[section[parsed.kind]].append(json.loads(objects[key], object_pairs_hook=_int_keys))
    return out


def _int_keys(pairs: list[tuple[str, object]]) -> dict[object, object]:
    """Port maps ({"80": 8080}) are the only mappings keyed by digits in a mesh document."""
    return {int(k) if k.isdigit() else k: v for k, v in pairs}


# --- diff -----------------------------------------------------------------------------------------


def _same(a: bytes, b: bytes) -> bool:
    """Equal as JSON (a value written by hand may not be canonical), else as bytes."""
    if a == b:
        return True
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def _pretty(value: bytes) -> list[str]:
    try:
        return json.dumps(json.loads(value), indent=2, sort_keys=True).splitlines()
    except ValueError:
        return [repr(value)]


@dataclass(frozen=True)
class MeshDiff:
    """What a push changes: keys added, changed, removed (each sorted), and both sides' values."""

    added: tuple[bytes, ...]
    changed: tuple[bytes, ...]
    removed: tuple[bytes, ...]
    before: Mapping[bytes, bytes] = field(repr=False)
    after: Mapping[bytes, bytes] = field(repr=False)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def summary(self) -> str:
        if self.empty:
            return "no change"
        return f"{len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed"

    def render(self) -> str:
        """`+ key` with the new object, `- key`, `~ key` with a unified diff of the object."""
        lines: list[str] = []
        for key in self.added:
            lines.append(f"+ {key.decode(errors='replace')}")
            lines += [f"+   {line}" for line in _pretty(self.after[key])]
        for key in self.changed:
            name = key.decode(errors="replace")
            lines.append(f"~ {name}")
            body = difflib.unified_diff(
                _pretty(self.before[key]),
                _pretty(self.after[key]),
                "etcd",
                "file",
                n=2,
                lineterm="",
            )
            lines += [f"    {line}" for line in body]
        lines += [f"- {key.decode(errors='replace')}" for key in self.removed]
        lines.append(self.summary())
        return "\n".join(lines)


def diff(current: Mapping[bytes, bytes], new: Mapping[bytes, bytes]) -> MeshDiff:
    return MeshDiff(
        added=tuple(sorted(k for k in new if k not in current)),
        changed=tuple(sorted(k for k in new if k in current and not _same(current[k], new[k]))),
        removed=tuple(sorted(k for k in current if k not in new)),
        before=current,
        after=new,
    )
