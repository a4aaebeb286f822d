"""etcd v3 JSON gateway documents <-> frozen dataclasses. Pure: no I/O.

The gateway (etcd 3.4, HTTP/1.1 + JSON) encodes keys and values as base64, int64 fields as decimal
strings, and omits every field that holds its zero value (0, false, "", empty list, enum 0 such as
PUT). Decoders here restore those defaults so callers never see a missing field, and raise
EtcdBadAnswer (never a ValueError) for a field they cannot read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from zt.fleet.etcderrors import EtcdBadAnswer

# Compare targets / results as the gateway spells the protobuf enums.
_TARGETS = {"mod": "MOD", "create": "CREATE", "version": "VERSION", "value": "VALUE"}
_TARGET_FIELDS = {
    "mod": "mod_revision",
    "create": "create_revision",
    "version": "version",
    "value": "value",
}
_RESULTS = {"equal": "EQUAL", "greater": "GREATER", "less": "LESS", "not_equal": "NOT_EQUAL"}


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # delete: kv.value == b""


@dataclass(frozen=True)
class WatchBatch:
    revision: int  # header revision of this response
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True)
class Compare:
    """target in {"mod", "create", "version", "value"}; result "equal"|"greater"|"less"|"not_equal"."""

    key: bytes
    target: str
    result: str
    value: int | bytes
    range_end: bytes | None = None


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes | None = None  # prefix delete: range_end=prefix_end(key)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class WatchResponse:
    """One decoded line of a watch stream."""

    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    batch: WatchBatch


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix": prefix with its last byte below 0xff
    incremented (trailing 0xff bytes dropped); b"\\0" (the whole keyspace) when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, field: str = "key/value") -> bytes:
    if not text:
        return b""
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise EtcdBadAnswer(field, text, "base64") from None


def as_int(value: object, field: str = "revision") -> int:
    """int64 fields arrive as strings ("12"), absent when zero."""
    if value is None or value == "":
        return 0
    try:
        return int(str(value))
    except ValueError:
        raise EtcdBadAnswer(field, value, "a decimal integer") from None


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[object]:
    return value if isinstance(value, list) else []


def header_revision(doc: Mapping[str, object]) -> int:
    return as_int(_mapping(doc.get("header")).get("revision"), "header.revision")


def decode_kv(doc: object) -> KeyValue:
    kv = _mapping(doc)
    return KeyValue(
        key=unb64(kv.get("key"), "kv.key"),
        value=unb64(kv.get("value"), "kv.value"),
        create_revision=as_int(kv.get("create_revision"), "kv.create_revision"),
        mod_revision=as_int(kv.get("mod_revision"), "kv.mod_revision"),
        version=as_int(kv.get("version"), "kv.version"),
    )


def decode_range(doc: Mapping[str, object]) -> tuple[list[KeyValue], int]:
    return [decode_kv(kv) for kv in _list(doc.get("kvs"))], header_revision(doc)


def range_request(
    key: bytes, range_end: bytes | None, revision: int, keys_only: bool, limit: int
) -> dict[str, object]:
    body: dict[str, object] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if revision:
        body["revision"] = str(revision)
    if keys_only:
        body["keys_only"] = True
    if limit:
        body["limit"] = str(limit)
    return body


def delete_request(key: bytes, range_end: bytes | None) -> dict[str, object]:
    body: dict[str, object] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return body


def encode_compare(cmp: Compare) -> dict[str, object]:
    if cmp.target not in _TARGETS or cmp.result not in _RESULTS:
        raise ValueError(f"compare: target {cmp.target!r} / result {cmp.result!r} not supported")
    body: dict[str, object] = {
        "key": b64(cmp.key),
        "target": _TARGETS[cmp.target],
        "result": _RESULTS[cmp.result],
    }
    if cmp.range_end is not None:
        body["range_end"] = b64(cmp.range_end)
    field = _TARGET_FIELDS[cmp.target]
    if cmp.target == "value":
        if not isinstance(cmp.value, bytes):
            raise ValueError("compare on value needs bytes")
        body[field] = b64(cmp.value)
    else:
        if not isinstance(cmp.value, int):
            raise ValueError(f"compare on {cmp.target} needs an int")
        body[field] = str(cmp.value)
    return body


def encode_op(op: Put | Delete) -> dict[str, object]:
    if isinstance(op, Put):
        return {"request_put": {"key": b64(op.key), "value": b64(op.value)}}
    return {"request_delete_range": delete_request(op.key, op.range_end)}


def txn_request(
    compare: Sequence[Compare], success: Sequence[Put | Delete], failure: Sequence[Put | Delete]
) -> dict[str, object]:
    return {
        "compare": [encode_compare(c) for c in compare],
        "success": [encode_op(o) for o in success],
        "failure": [encode_op(o) for o in failure],
    }


def decode_txn(doc: Mapping[str, object]) -> TxnResult:
    return TxnResult(succeeded=bool(doc.get("succeeded")), revision=header_revision(doc))


def watch_request(
    key: bytes, range_end: bytes | None, start_revision: int, prev_kv: bool
) -> dict[str, object]:
    # progress notifications keep a healthy stream from going quiet (zt/fleet/etcdwatch.py)
    create: dict[str, object] = {"key": b64(key), "progress_notify": True}
    if range_end is not None:
        create["range_end"] = b64(range_end)
    if start_revision:
        create["start_revision"] = str(start_revision)
    if prev_kv:
        create["prev_kv"] = True
    return {"create_request": create}


def decode_watch(doc: Mapping[str, object]) -> WatchResponse:
    """One line of the stream: {"result": {...}} (or {"error": ...}, handled by the caller)."""
    result = _mapping(doc.get("result"))
    events = tuple(
        WatchEvent(
            kind="delete" if _mapping(ev).get("type") == "DELETE" else "put",
            kv=decode_kv(_mapping(ev).get("kv")),
        )
        for ev in _list(result.get("events"))
    )
    return WatchResponse(
        created=bool(result.get("created")),
        canceled=bool(result.get("canceled")),
        compact_revision=as_int(result.get("compact_revision"), "compact_revision"),
        cancel_reason=str(result.get("cancel_reason") or ""),
        batch=WatchBatch(revision=header_revision(result), events=events),
    )
