"""The etcd key layout of a fleet, as pure functions (docs/fleet.md lists it).

    {p}/mesh/workloads/{uid}             {p}/ca/bundle            {p}/csr/{node}/{request}
    {p}/mesh/services/{namespace}/{name} {p}/ca/nodes/{node}      {p}/certs/{node}/{request}
    {p}/mesh/policies/{namespace}/{name} {p}/tokens/{token_id}    {p}/join/{token_id}/request|response
    {p}/meta/mesh-push                   (the last push: guards concurrent pushes, zt/fleet/push.py)

Every key is bytes (what the etcd client takes). Names are one key segment: not empty, no '/',
printable. A workload uid may hold '/' (`default/pod-a1`), so it is percent-encoded into one
segment (`default%2Fpod-a1`); `parse` decodes it back and refuses a non-canonical spelling, so one
uid has exactly one key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

from zt.errors import UsageError

DEFAULT_PREFIX = "/zt"

Kind = Literal[
    "workload",
    "service",
    "policy",
    "bundle",
    "node_cert",
    "csr",
    "cert",
    "join_request",
    "join_response",
    "token",
    "mesh_push",
]


class BadKeyPrefix(UsageError):
    reason = "bad_etcd_prefix"


class BadKeyName(UsageError):
    reason = "bad_etcd_key_name"


def check_prefix(prefix: str) -> str:
    """The prefix itself, or BadKeyPrefix naming what is wrong (one line)."""
    if not prefix.startswith("/") or prefix.endswith("/") or not prefix.isprintable():
        raise BadKeyPrefix(
            f"--etcd-prefix: got {prefix!r}, expected a path starting with '/', without a "
            "trailing '/', printable (e.g. /zt)"
        )
    if "//" in prefix or " " in prefix:
        raise BadKeyPrefix(f"--etcd-prefix: got {prefix!r}, expected no empty segment or space")
    return prefix


def _seg(what: str, name: str) -> str:
    if not name or "/" in name or not name.isprintable() or name in (".", ".."):
        raise BadKeyName(f"{what}: got {name!r}, expected a non-empty printable name without '/'")
    return name


def _key(prefix: str, *parts: str) -> bytes:
    return "/".join((check_prefix(prefix), *parts)).encode()


def _uid_seg(uid: str) -> str:
    if not uid or not uid.isprintable():
        raise BadKeyName(f"workload uid: got {uid!r}, expected a non-empty printable string")
    return quote(uid, safe="")


# --- prefixes (end in '/': used with prefix_end for ranges and watches) -----------------------


def root_prefix(p: str) -> bytes:
    return _key(p, "")


def mesh_prefix(p: str) -> bytes:
    return _key(p, "mesh", "")


def workloads_prefix(p: str) -> bytes:
    return _key(p, "mesh", "workloads", "")


def services_prefix(p: str) -> bytes:
    return _key(p, "mesh", "services", "")


def policies_prefix(p: str) -> bytes:
    return _key(p, "mesh", "policies", "")


def ca_prefix(p: str) -> bytes:
    return _key(p, "ca", "")


def node_certs_prefix(p: str) -> bytes:
    return _key(p, "ca", "nodes", "")


def csr_root(p: str) -> bytes:
    return _key(p, "csr", "")


def csr_prefix(p: str, node: str) -> bytes:
    return _key(p, "csr", _seg("node", node), "")


def cert_root(p: str) -> bytes:
    return _key(p, "certs", "")


def cert_prefix(p: str, node: str) -> bytes:
    return _key(p, "certs", _seg("node", node), "")


def join_root(p: str) -> bytes:
    return _key(p, "join", "")


def join_prefix(p: str, token_id: str) -> bytes:
    return _key(p, "join", _seg("token id", token_id), "")


def tokens_prefix(p: str) -> bytes:
    return _key(p, "tokens", "")


# --- keys ---------------------------------------------------------------------------------------


def workload_key(p: str, uid: str) -> bytes:
    return _key(p, "mesh", "workloads", _uid_seg(uid))


def service_key(p: str, ns: str, name: str) -> bytes:
    return _key(p, "mesh", "services", _seg("namespace", ns), _seg("service name", name))


def policy_key(p: str, ns: str, name: str) -> bytes:
    return _key(p, "mesh", "policies", _seg("namespace", ns), _seg("policy name", name))


def bundle_key(p: str) -> bytes:
    return _key(p, "ca", "bundle")


def node_cert_key(p: str, node: str) -> bytes:
    return _key(p, "ca", "nodes", _seg("node", node))


def csr_key(p: str, node: str, req: str) -> bytes:
    return _key(p, "csr", _seg("node", node), _seg("request id", req))


def cert_key(p: str, node: str, req: str) -> bytes:
    return _key(p, "certs", _seg("node", node), _seg("request id", req))


def join_request_key(p: str, token_id: str) -> bytes:
    return _key(p, "join", _seg("token id", token_id), "request")


def join_response_key(p: str, token_id: str) -> bytes:
    return _key(p, "join", _seg("token id", token_id), "response")


def token_key(p: str, token_id: str) -> bytes:
    return _key(p, "tokens", _seg("token id", token_id))


def mesh_push_key(p: str) -> bytes:
    """Written by every `zt config push` in its txn: two pushes prepared on the same revision
    collide on it even when one only deletes (a delete leaves no key for a range compare)."""
    return _key(p, "meta", "mesh-push")


# --- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedKey:
    """What a key names: its kind and its name parts (a workload: (uid,); a service or policy:
    (namespace, name); a csr or cert: (node, request id); a join key: (token id,); ...)."""

    kind: Kind
    parts: tuple[str, ...]


# relative path shape -> kind; "*" is one name segment, a literal must match
_SHAPES: tuple[tuple[tuple[str, ...], Kind], ...] = (
    (("mesh", "workloads", "*"), "workload"),
    (("mesh", "services", "*", "*"), "service"),
    (("mesh", "policies", "*", "*"), "policy"),
    (("ca", "bundle"), "bundle"),
    (("ca", "nodes", "*"), "node_cert"),
    (("csr", "*", "*"), "csr"),
    (("certs", "*", "*"), "cert"),
    (("join", "*", "request"), "join_request"),
    (("join", "*", "response"), "join_response"),
    (("tokens", "*"), "token"),
    (("meta", "mesh-push"), "mesh_push"),
)


def _match(shape: tuple[str, ...], segs: list[str]) -> tuple[str, ...] | None:
    if len(shape) != len(segs):
        return None
    names: list[str] = []
    for want, got in zip(shape, segs, strict=True):
        if want == "*":
            if not got or not got.isprintable():
                return None
            names.append(got)
        elif want != got:
            return None
    return tuple(names)


def parse(p: str, key: bytes) -> ParsedKey | None:
    """The kind and names of `key` under prefix `p`, or None when it is not a key of this layout
    (another prefix, an unknown kind, a bad segment, or a workload uid spelled non-canonically)."""
    root = root_prefix(p)
    if not key.startswith(root):
        return None
    try:
        segs = key[len(root) :].decode().split("/")
    except UnicodeDecodeError:
        return None
    for shape, kind in _SHAPES:
        names = _match(shape, segs)
        if names is None:
            continue
        if kind == "workload":
            try:
                uid = unquote(names[0], errors="strict")
            except UnicodeDecodeError:
                return None
            if not uid.isprintable() or quote(uid, safe="") != names[0]:
                return None
            names = (uid,)
        return ParsedKey(kind, names)
    return None


def key_of(p: str, parsed: ParsedKey) -> bytes:
    """The key `parsed` came from (the inverse of parse)."""
    builders: dict[Kind, Callable[..., bytes]] = {
        "workload": workload_key,
        "service": service_key,
        "policy": policy_key,
        "bundle": bundle_key,
        "node_cert": node_cert_key,
        "csr": csr_key,
        "cert": cert_key,
        "join_request": join_request_key,
        "join_response": join_response_key,
        "token": token_key,
        "mesh_push": mesh_push_key,
    }
    build = builders[parsed.kind]
    return build(p, *parsed.parts)
