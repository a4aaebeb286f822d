"""Joining a node with a one-time token (docs/fleet.md): both sides.

Operator: `create_token` makes etcd user zt-join-<id> (password = the token's secret) and the token
record. Node (`request_join`, authenticated as that user): generates its node key and its future
etcd password locally, puts {p}/join/<id>/request, waits for {p}/join/<id>/response.
Signer (`admit`): checks the token (exists, unused, unexpired, for this node) and the CSR (the node
identity of that node); then in ONE txn guarded by the token's and the request's mod revisions it
marks the token used and deletes the request (the password must not stay in etcd); only a request
that won that claim sets etcd user zt-node-{node}'s password, after which the node certificate and
the response are written (the node can authenticate as soon as it reads the response). A signer
that fails between the claim and the response leaves a used token and no answer: the node times out
and needs a new token (fail closed). The etcd history still holds the request until compaction, so
the signer removes the join user (the only non-root reader) soon after the token's use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from zt.errors import ZtError
from zt.fleet import acl, csr, keys, tokens
from zt.fleet.etcd import Compare, Delete, EtcdClient, KeyValue, Put, prefix_end
from zt.fleet.etcderrors import EtcdCompacted, EtcdError, EtcdUnavailable
from zt.fleet.rotation import Bundle, RotationError
from zt.identity.ca import CertificateAuthority


class _Refusals(Protocol):
    def refuse(self, reason: str) -> None: ...


class Signer(Protocol):
    """What admitting a join needs of the signer (zt/fleet/signer.py, which calls `admit`): a
    protocol, so this module does not import the module that imports it."""

    @property
    def client(self) -> EtcdClient: ...
    @property
    def prefix(self) -> str: ...
    @property
    def ca(self) -> CertificateAuthority: ...
    @property
    def stats(self) -> _Refusals: ...
    def clock(self) -> float: ...
    def token(self, token_id: str) -> tuple[tokens.TokenRecord | None, int]: ...
    def token_claimed(self, token_id: str, record: tokens.TokenRecord, revision: int) -> None: ...
    def node_joined(self, node: str, cert_pem: bytes) -> None: ...
    async def publish_bundle(self) -> Bundle: ...


log = logging.getLogger(__name__)
_PEM = serialization.Encoding.PEM
NODE_CERT_LIFETIME = 365 * 86400.0  # node certs only prove who signs a CSR: re-join to replace


class JoinRefused(ZtError):
    """The signer answered the join request with a refusal (token_used, token_expired, ...)."""

    reason = "join_refused"
    exit_code = 2

    def __init__(self, refusal: str, message: str) -> None:
        self.refusal = refusal
        super().__init__(f"join refused: {refusal}: {message}")


class JoinFailed(ZtError):
    """The join could not be asked or answered (no bundle in etcd, no signer running)."""

    reason = "join_failed"
    exit_code = 1


class JoinTimeout(JoinFailed):
    reason = "join_timeout"


# --- operator -----------------------------------------------------------------------------------


async def create_token(
    client: EtcdClient, prefix: str, node: str, *, ttl: float, now: float | None = None
) -> tokens.Token:
    """A new single-use token for `node`, valid `ttl` seconds (root credentials)."""
    keys.csr_prefix(prefix, node)  # validates the node name as a key segment
    csr.node_identity("x", node)  # ... and as a SPIFFE service-account segment
    token = tokens.Token.new()
    now = time.time() if now is None else now
    record = tokens.TokenRecord(node, now + ttl, tokens.sha256(token.secret))
    await acl.join_role(client, prefix, token.id, token.secret)
    await client.put(keys.token_key(prefix, token.id), record.to_json())
    return token


async def remove_token(client: EtcdClient, prefix: str, token_id: str) -> None:
    """The sweep of an expired token: its user/role, record and join keys."""
    await acl.drop_join_role(client, token_id)
    await client.delete(keys.token_key(prefix, token_id))
    jp = keys.join_prefix(prefix, token_id)
    await client.delete(jp, prefix_end(jp))


# --- node -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    node: str
    node_key_pem: bytes
    node_cert_pem: bytes
    bundle: Bundle
    etcd_user: str
    etcd_password: str


async def request_join(
    client: EtcdClient, prefix: str, token: tokens.Token, node: str, *, timeout: float = 30.0
) -> Joined:
    """Ask the signer to admit `node`; `client` authenticates as the token's join user."""
    bundle_kv = await client.get(keys.bundle_key(prefix))
    if bundle_kv is None:
        raise JoinFailed(
            f"{keys.bundle_key(prefix).decode()}: no trust bundle; run `zt ca init --etcd`"
        )
    bundle = Bundle.from_json(bundle_kv.value)
    key = csr.new_key()
    password = secrets.token_urlsafe(24)
    request = {
        "node": node,
        "csr": csr.build_csr(csr.node_identity(bundle.trust_domain, node), key).decode("ascii"),
        "etcd_password": password,
    }
    response_key = keys.join_response_key(prefix, token.id)
    await client.delete(response_key)  # a previous attempt's answer is not ours
    request_key = keys.join_request_key(prefix, token.id)
    rev = await client.put(request_key, json.dumps(request).encode())
    try:
        doc = await _await_put(client, response_key, rev, timeout)
    except JoinTimeout:
        # unanswered, the request would keep this node's future etcd password in etcd
        with contextlib.suppress(EtcdError):
            await client.txn([Compare(request_key, "mod", "equal", rev)], [Delete(request_key)])
        raise
    if "refused" in doc:
        raise JoinRefused(str(doc["refused"]), str(doc.get("message", "")))
    try:
        cert_pem, user = str(doc["node_cert"]).encode("ascii"), str(doc["etcd_user"])
        bundle = Bundle.from_doc(doc["bundle"])
    except (KeyError, UnicodeError, RotationError) as exc:
        raise JoinFailed(
            f"{response_key.decode()}: expected {{node_cert, bundle, etcd_user}} ({exc})"
        ) from None
    return Joined(node, csr.key_pem(key), cert_pem, bundle, user, password)


async def _await_put(
    client: EtcdClient, key: bytes, after: int, timeout: float
) -> dict[str, object]:
    """The JSON object put at `key` after revision `after`, within `timeout` seconds."""

    async def wait() -> dict[str, object]:
        start = after + 1
        while True:
            try:
                async for batch in client.watch(key, start_revision=start):
                    for ev in batch.events:
                        if ev.kind == "put":
                            return _json_object(key, ev.kv.value)
                    start = batch.revision + 1
            except (EtcdUnavailable, EtcdCompacted):
                kv = await _get_quietly(client, key)
                if kv is not None and kv.mod_revision > after:
                    return _json_object(key, kv.value)
                await asyncio.sleep(0.2)

    try:
        return await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise JoinTimeout(
            f"no answer at {key.decode()} within {timeout:.0f}s; is `zt ca serve` running?"
        ) from None


def _json_object(key: bytes, value: bytes) -> dict[str, object]:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise JoinFailed(f"{key.decode()}: the signer's answer is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise JoinFailed(f"{key.decode()}: expected a JSON object, got {value[:80]!r}")
    return doc


async def _get_quietly(client: EtcdClient, key: bytes) -> KeyValue | None:
    try:
        return await client.get(key)
    except EtcdUnavailable:
        return None


# --- signer -------------------------------------------------------------------------------------


async def admit(signer: Signer, token_id: str, kv: KeyValue) -> None:
    """Answer one join request (see the module docstring)."""
    p, client, now = signer.prefix, signer.client, signer.clock()
    parsed = _parse_request(p, kv.value)
    if isinstance(parsed, csr.Refuse):
        await _refuse(signer, kv, parsed)
        return
    node, csr_pem, password = parsed
    record, token_rev = signer.token(token_id)
    refusal = tokens.check(record, token_id, node, now)
    decision = refusal or csr.decide_join(csr_pem, node, signer.ca.trust_domain)
    if isinstance(decision, csr.Refuse):
        await _refuse(signer, kv, decision)
        return
    assert record is not None
    used = tokens.TokenRecord(record.node, record.expires, record.secret_sha256, now)
    token_key = keys.token_key(p, token_id)
    # claim first: a request that lost a race (the token changed, or the node re-sent: that one
    # comes next on the watch) changes no etcd user; the password leaves etcd in the same txn
    unchanged = [
        Compare(token_key, "mod", "equal", token_rev),
        Compare(kv.key, "mod", "equal", kv.mod_revision),
    ]
    claim = await client.txn(unchanged, [Put(token_key, used.to_json()), Delete(kv.key)])
    if not claim.succeeded:
        log.warning(
            "signer: join of node %s with token %s lost a race; not admitted", node, token_id
        )
        return
    signer.token_claimed(token_id, used, claim.revision)
    ident = csr.node_identity(signer.ca.trust_domain, node)
    leaf = signer.ca.sign(ident, decision.public_key, now=now, lifetime=NODE_CERT_LIFETIME)
    cert_pem = leaf.public_bytes(_PEM) + signer.ca.leaf_chain_pem
    user = await acl.node_role(client, p, node, password)  # before the answer: usable once read
    bundle = await signer.publish_bundle()
    answer = {"node_cert": cert_pem.decode("ascii"), "bundle": bundle.to_doc(), "etcd_user": user}
    node_doc = {"cert": cert_pem.decode("ascii"), "joined_at": now}
    await client.txn(
        [],
        [
            Put(keys.node_cert_key(p, node), json.dumps(node_doc).encode()),
            Put(keys.join_response_key(p, token_id), json.dumps(answer).encode()),
        ],
    )
    signer.node_joined(node, cert_pem)
    log.info("signer: node %s joined with token %s (etcd user %s)", node, token_id, user)


def _parse_request(p: str, value: bytes) -> tuple[str, bytes, str] | csr.Refuse:
    """(node, CSR PEM, etcd password) of a join request, or a bad_request refusal."""
    try:
        req = json.loads(value)
        node, csr_pem, password = (
            str(req["node"]),
            str(req["csr"]).encode(),
            str(req["etcd_password"]),
        )
        keys.csr_prefix(p, node)
    except (ValueError, KeyError, TypeError, ZtError) as exc:
        return csr.Refuse("bad_request", f"join request does not parse ({exc})")
    return node, csr_pem, password


async def _refuse(signer: Signer, kv: KeyValue, refusal: csr.Refuse) -> None:
    parsed = keys.parse(signer.prefix, kv.key)
    assert parsed is not None
    response_key = keys.join_response_key(signer.prefix, parsed.parts[0])
    answer = {"refused": refusal.reason, "message": refusal.message}
    await signer.client.txn(
        [Compare(kv.key, "mod", "equal", kv.mod_revision)],
        [Put(response_key, json.dumps(answer).encode()), Delete(kv.key)],
    )
    signer.stats.refuse(refusal.reason)
    log.warning("signer: refused join %s: %s: %s", parsed.parts[0], refusal.reason, refusal.message)
