"""`zt ca serve`: the one process that holds the CA key, answering requests through etcd.

It lists the whole {p}/ prefix once and then follows one watch on it, so mesh placements, node
certificates, tokens, CSRs and join requests are all seen in revision order from one resume point:
  {p}/csr/{node}/{req}     -> csr.decide -> {p}/certs/{node}/{req} = {"chain"} | {"refused", "message"}
  CSR deleted              -> its answer is deleted too
  {p}/join/{id}/request    -> tokens.check + csr.decide_join -> join.admit (node user, node cert)
  a tick (0.5 s)           -> rotation.plan (switch/retire, bundle republished), expired-token sweep
etcd outages: backoff and re-list; compaction: re-list. Re-listing never signs twice: a CSR whose
answer exists is skipped, and a join request is deleted in the same txn that answers it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from zt.errors import ConfigError, ZtError
from zt.fleet import csr, join, keys, rotation, tokens
from zt.fleet.etcd import Compare, EtcdClient, KeyValue, Put, WatchEvent, prefix_end
from zt.fleet.etcderrors import EtcdCompacted, EtcdError
from zt.fleet.meshdoc import MeshDecoder
from zt.identity.ca import CertificateAuthority

log = logging.getLogger(__name__)
DEFAULT_LEAF_LIFETIME = 86400.0
TOKEN_SWEEP_GRACE = 300.0  # an expired token answers token_expired this long before it is removed
_PEM = serialization.Encoding.PEM


@dataclass
class _View:
    """What the signer knows of etcd, rebuilt by each list and kept current by the watch."""

    mesh: dict[bytes, bytes] = field(default_factory=dict)
    placed: dict[str, frozenset[str]] = field(default_factory=dict)
    node_certs: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, tuple[tokens.TokenRecord | None, int]] = field(default_factory=dict)
    answered: set[tuple[str, str]] = field(default_factory=set)  # (node, req) with a cert object
    mesh_dirty: bool = False


@dataclass
class Stats:
    signed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    joined: int = 0
    lists: int = 0  # full listings: the first, then one per etcd outage or compaction

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class Signer:
    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        ca_dir: Path,
        *,
        leaf_lifetime: float = DEFAULT_LEAF_LIFETIME,
        clock: Callable[[], float] = time.time,
        tick: float = 0.5,
        backoff: tuple[float, float] = (0.2, 5.0),
        sweep_grace: float = TOKEN_SWEEP_GRACE,
    ) -> None:
        self.client = client
        self.prefix = keys.check_prefix(prefix)
        self.ca_dir = ca_dir
        self.leaf_lifetime = leaf_lifetime
        self.clock = clock
        self.tick = tick
        self.backoff = backoff
        self.sweep_grace = sweep_grace
        self.ca = CertificateAuthority.load(ca_dir)
        self.stats = Stats()
        self._view = _View()
        self._decoder = MeshDecoder(self.prefix)
        self.revision = 0
        self._published: list[bytes] | None = None  # the roots last put at {p}/ca/bundle

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever (until cancelled): list, follow the watch, tick; resume after any etcd failure."""
        ticker = asyncio.create_task(self._ticker())
        try:
            await self._follow_forever()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _follow_forever(self) -> None:
        delay = self.backoff[0]
        while True:
            try:
                await self.publish_bundle()
                await self._list()
                delay = self.backoff[0]
                await self._follow()
            except EtcdCompacted as exc:
                log.info("signer: watch compacted (%s); listing again", exc)
            except EtcdError as exc:
                log.warning("signer: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.backoff[1])

    async def _list(self) -> None:
        root = keys.root_prefix(self.prefix)
        kvs, self.revision = await self.client.range(root, prefix_end(root))
        self._view = _View(placed=self._view.placed)  # a bad mesh keeps the last good placements
        pending: list[KeyValue] = []
        for kv in kvs:
            if self._absorb(kv.key, kv.value, kv.mod_revision):
                pending.append(kv)
        self._refresh_placements()
        for kv in pending:
            await self._act_on_put(kv)
        csrs = {kv.key for kv in pending}
        for node, req in list(self._view.answered):  # an answer whose CSR went while we were down
            if keys.csr_key(self.prefix, node, req) not in csrs:
                await self.client.delete(keys.cert_key(self.prefix, node, req))
        self.stats.lists += 1
        log.info("signer: listed %d keys at revision %d", len(kvs), self.revision)

    async def _follow(self) -> None:
        root = keys.root_prefix(self.prefix)
        async for batch in self.client.watch(
            root, prefix_end(root), start_revision=self.revision + 1
        ):
            actions: list[KeyValue] = []
            deletes: list[WatchEvent] = []
            for ev in batch.events:
                if ev.kind == "delete":
                    self._forget(ev.kv.key)
                    deletes.append(ev)
                elif self._absorb(ev.kv.key, ev.kv.value, ev.kv.mod_revision):
                    actions.append(ev.kv)
            self._refresh_placements()
            for kv in actions:
                await self._act_on_put(kv)
            for ev in deletes:
                await self._act_on_delete(ev.kv.key)
            self.revision = max(self.revision, batch.revision)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.rotate_due()
                await self.sweep_tokens()
            except (EtcdError, OSError) as exc:
                log.warning("signer: periodic work failed: %s", exc)
            except ZtError as exc:
                log.error("signer: %s", exc)

    # --- the view -----------------------------------------------------------------------------

    def _absorb(self, key: bytes, value: bytes, mod_revision: int) -> bool:
        """Record a put in the view; True when it asks for an action (a CSR or join request)."""
        parsed = keys.parse(self.prefix, key)
        if parsed is None:
            return False
        v = self._view
        if parsed.kind in ("workload", "service", "policy"):
            v.mesh[key] = value
            v.mesh_dirty = True
        elif parsed.kind == "node_cert":
            cert = _node_cert(value)
            if cert is not None:
                v.node_certs[parsed.parts[0]] = cert
        elif parsed.kind == "token":
            v.tokens[parsed.parts[0]] = (tokens.TokenRecord.from_json(value), mod_revision)
        elif parsed.kind == "cert":
            v.answered.add((parsed.parts[0], parsed.parts[1]))
        elif parsed.kind == "bundle":
            self._reload_ca()
        return parsed.kind in ("csr", "join_request")

    def _forget(self, key: bytes) -> None:
        parsed = keys.parse(self.prefix, key)
        if parsed is None:
            return
        v = self._view
        if parsed.kind in ("workload", "service", "policy"):
            v.mesh.pop(key, None)
            v.mesh_dirty = True
        elif parsed.kind == "node_cert":
            v.node_certs.pop(parsed.parts[0], None)
        elif parsed.kind == "token":
            v.tokens.pop(parsed.parts[0], None)
        elif parsed.kind == "cert":
            v.answered.discard((parsed.parts[0], parsed.parts[1]))

    def _refresh_placements(self) -> None:
        v = self._view
        if not v.mesh_dirty:
            return
        v.mesh_dirty = False
        try:
            snap = self._decoder.decode(v.mesh)
        except ConfigError as exc:  # keep the last good placements, as nodes keep their snapshot
            log.warning("signer: mesh in etcd rejected, keeping the last good placements: %s", exc)
            return
        placed: dict[str, set[str]] = {}
        for w in snap.workloads:
            placed.setdefault(w.node, set()).add(w.identity)
        v.placed = {n: frozenset(ids) for n, ids in placed.items()}

    def _reload_ca(self) -> None:
        try:
            self.ca = CertificateAuthority.load(self.ca_dir)
        except ZtError as exc:
            log.error("signer: cannot reload the CA in %s: %s", self.ca_dir, exc)

    # --- actions ------------------------------------------------------------------------------

    async def _act_on_put(self, kv: KeyValue) -> None:
        parsed = keys.parse(self.prefix, kv.key)
        if parsed is None:
            return
        if parsed.kind == "csr":
            await self._answer_csr(parsed.parts[0], parsed.parts[1], kv)
        elif parsed.kind == "join_request":
            await join.admit(self, parsed.parts[0], kv)

    async def _act_on_delete(self, key: bytes) -> None:
        parsed = keys.parse(self.prefix, key)
        if parsed is not None and parsed.kind == "csr":
            node, req = parsed.parts
            await self.client.delete(keys.cert_key(self.prefix, node, req))

    async def _answer_csr(self, node: str, req: str, kv: KeyValue) -> None:
        if (node, req) in self._view.answered:
            return  # answered before a re-list: never sign twice
        now = self.clock()
        try:
            env = csr.Envelope.from_json(kv.value)
        except csr.BadEnvelope as exc:
            decision: csr.Decision = csr.Refuse("bad_csr", str(exc))
        else:
            decision = csr.decide(
                env,
                node,
                placed=self._view.placed.get(node, frozenset()),
                node_cert_pem=self._view.node_certs.get(node),
                trust_domain=self.ca.trust_domain,
                now=now,
            )
        answer = self._answer(decision, now)
        cert_key = keys.cert_key(self.prefix, node, req)
        guards = [
            Compare(kv.key, "create", "equal", kv.create_revision),  # the CSR is still there
            Compare(cert_key, "version", "equal", 0),  # and not answered yet
        ]
        result = await self.client.txn(guards, [Put(cert_key, json.dumps(answer).encode())])
        if not result.succeeded:
            return
        self._view.answered.add((node, req))
        if isinstance(decision, csr.Allow):
            self.stats.signed += 1
            log.info("signer: signed %s for node %s (request %s)", decision.identity, node, req)
        else:
            self.stats.refuse(decision.reason)
            log.warning(
                "signer: refused node %s request %s: %s: %s",
                node,
                req,
                decision.reason,
                decision.message,
            )

    def _answer(self, decision: csr.Decision, now: float) -> Mapping[str, str]:
        if isinstance(decision, csr.Refuse):
            return {"refused": decision.reason, "message": decision.message}
        leaf = self.ca.sign(
            decision.identity, decision.public_key, now=now, lifetime=self.leaf_lifetime
        )
        return {"chain": (leaf.public_bytes(_PEM) + self.ca.leaf_chain_pem).decode("ascii")}

    def token(self, token_id: str) -> tuple[tokens.TokenRecord | None, int]:
        """The token record and its mod revision (0: no such token)."""
        return self._view.tokens.get(token_id, (None, 0))

    def token_claimed(self, token_id: str, record: tokens.TokenRecord, revision: int) -> None:
        """A join claimed the token: later requests in the same batch see it used."""
        self._view.tokens[token_id] = (record, revision)

    def node_joined(self, node: str, cert_pem: bytes) -> None:
        self._view.node_certs[node] = cert_pem
        self.stats.joined += 1

    # --- bundle, rotation, tokens -------------------------------------------------------------

    def bundle_roots(self) -> list[bytes]:
        return rotation.bundle_roots(self.ca_dir)

    async def publish_bundle(self) -> rotation.Bundle:
        """Make {p}/ca/bundle hold the CA dir's roots (a new generation when they changed); a
        rotation's switch countdown starts once etcd holds its new root."""
        roots = self.bundle_roots()
        bundle = await rotation.publish_bundle(
            self.client, self.prefix, self.ca.trust_domain, roots
        )
        self._published = roots
        rotation.mark_published(self.ca_dir, bundle.roots, self.clock())
        return bundle

    async def rotate_due(self) -> None:
        """Apply what the rotation schedule says is due, then publish the CA dir's roots if etcd
        does not hold them yet (also after a publish that failed: etcd was down)."""
        state = rotation.read_state(self.ca_dir)
        now = self.clock()
        for action in rotation.plan(state, now):
            rotation.apply(self.ca_dir, action, now=now, leaf_lifetime=self.leaf_lifetime)
            self._reload_ca()
            log.info("signer: rotation step %s applied to %s", action, self.ca_dir)
        if self.bundle_roots() != self._published:
            bundle = await self.publish_bundle()
            log.info("signer: bundle generation %d published", bundle.generation)

    async def sweep_tokens(self) -> None:
        """Remove tokens `sweep_grace` after they expired or were used (meanwhile a retry is told
        token_used/token_expired): a used token's join user could otherwise read the node's etcd
        password from the history of its join request until the token expires."""
        now = self.clock()
        for token_id, (record, _rev) in list(self._view.tokens.items()):
            if record is not None and now < _sweep_at(record) + self.sweep_grace:
                continue
            await join.remove_token(self.client, self.prefix, token_id)
            self._view.tokens.pop(token_id, None)
            log.info("signer: removed spent join token %s", token_id)


def _sweep_at(record: tokens.TokenRecord) -> float:
    return record.expires if record.used_at is None else min(record.used_at, record.expires)


def _node_cert(value: bytes) -> bytes | None:
    try:
        doc = json.loads(value)
        return str(doc["cert"]).encode("ascii")
    except (ValueError, KeyError, TypeError, UnicodeError):
        return None
