"""The node's certificate source in fleet mode: CSRs through etcd to `zt ca serve` (docs/fleet.md).

`issue` generates the workload key here (it never leaves the node), puts the signed envelope at
{p}/csr/{node}/{req}, watches {p}/certs/{node}/{req} for the answer, deletes the CSR (the signer then
deletes the answer) and returns the WorkloadCert with the current trust bundle. A refusal raises
CertificateRefused and is counted (`zt_certificate_refused_total{reason}`).
`watch_bundle` follows {p}/ca/bundle forever; `apply_bundle` is what a node does with a new one:
swap the roots into every cached cert, then renew the leaves not signed by the first root (a root
rotation's switch puts the new root first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from zt.fleet import csr, keys
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdCompacted, EtcdError, EtcdUnavailable
from zt.fleet.rotation import Bundle, RotationError, split_pem
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateRefused, CertificateUnavailable
from zt.identity.manager import DEFAULT_LIFETIME, CertificateManager
from zt.identity.spiffe import SpiffeId
from zt.telemetry.metrics import Registry

log = logging.getLogger(__name__)
REFUSED_METRIC = "zt_certificate_refused_total"


class EtcdCertificateSource:
    """An AsyncCertificateSource (zt/identity/manager.py) answered by the fleet signer."""

    def __init__(
        self,
        connect: Callable[[], EtcdClient],
        prefix: str,
        node: str,
        node_key_pem: bytes,
        node_cert_pem: bytes,
        *,
        roots_pem: bytes = b"",
        timeout: float = 10.0,
        registry: Registry | None = None,
        backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self.connect = connect
        self.prefix = keys.check_prefix(prefix)
        self.node = node
        self.node_key = csr.load_private_key(node_key_pem, what="node key")
        self.node_cert_pem = node_cert_pem
        self.timeout = timeout
        self.backoff = backoff
        self._roots = roots_pem
        self.generation = 0
        self._client: EtcdClient | None = None
        self.refused: dict[str, int] = {}
        self._counter = (
            None
            if registry is None
            else registry.counter(
                REFUSED_METRIC, "certificate requests the fleet signer refused", ("reason",)
            )
        )

    @property
    def client(self) -> EtcdClient:
        if self._client is None:
            self._client = self.connect()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def current_roots(self) -> bytes:
        return self._roots

    # --- issuing ------------------------------------------------------------------------------

    async def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = DEFAULT_LIFETIME
    ) -> WorkloadCert:
        """Ask the signer (it chooses the lifetime: `lifetime` is not sent)."""
        del lifetime
        key, envelope = csr.make_request(identity, self.node_key, now)
        req = secrets.token_hex(8)
        csr_key = keys.csr_key(self.prefix, self.node, req)
        answer_key = keys.cert_key(self.prefix, self.node, req)
        if not self._roots:
            await self._load_roots()
        rev = await self.client.put(csr_key, envelope.to_json())
        try:
            doc = await asyncio.wait_for(self._answer(answer_key, rev), self.timeout)
        except TimeoutError:
            raise CertificateUnavailable(
                f"no answer from the signer for {identity} within {self.timeout:.0f}s "
                f"(request {answer_key.decode()}); is `zt ca serve` running?"
            ) from None
        finally:
            with contextlib.suppress(EtcdError):
                await self.client.delete(csr_key)
        if "refused" in doc:
            reason = str(doc["refused"])
            self.refused[reason] = self.refused.get(reason, 0) + 1
            if self._counter is not None:
                self._counter.inc(labels={"reason": reason})
            raise CertificateRefused(reason, str(doc.get("message", "")))
        chain = doc.get("chain")
        if not isinstance(chain, str) or not chain.isascii():
            raise CertificateUnavailable(
                f"signer answer {answer_key.decode()}: expected {{chain: PEM}} or a refusal"
            )
        return WorkloadCert.from_pem(
            chain.encode("ascii"), csr.key_pem(key), self._roots, what=str(identity)
        )

    async def _answer(self, key: bytes, after: int) -> dict[str, object]:
        """The answer put at `key` after revision `after`; survives a broken watch."""
        start = after + 1
        while True:
            try:
                async for batch in self.client.watch(key, start_revision=start):
                    for ev in batch.events:
                        if ev.kind == "put":
                            return _json_object(ev.kv.value)
                    start = batch.revision + 1
            except (EtcdUnavailable, EtcdCompacted) as exc:
                log.info("certificate answer watch on %s: %s; looking again", key.decode(), exc)
                with contextlib.suppress(EtcdUnavailable):
                    kv = await self.client.get(key)
                    if kv is not None:
                        return _json_object(kv.value)
                await asyncio.sleep(self.backoff[0])

    # --- the trust bundle ---------------------------------------------------------------------

    async def _load_roots(self) -> int:
        kv = await self.client.get(keys.bundle_key(self.prefix))
        if kv is None:
            raise CertificateUnavailable(
                f"{keys.bundle_key(self.prefix).decode()}: no trust bundle in etcd"
            )
        self._take(Bundle.from_json(kv.value))
        return kv.mod_revision

    def _take(self, bundle: Bundle) -> bool:
        changed = bundle.roots_pem != self._roots or bundle.generation != self.generation
        self._roots, self.generation = bundle.roots_pem, bundle.generation
        return changed

    async def watch_bundle(self, on_change: Callable[[bytes], None]) -> None:
        """Forever: call `on_change(roots_pem)` for every new bundle (also the first one seen, if
        it differs from the roots given at construction). Backs off across etcd outages."""
        key = keys.bundle_key(self.prefix)
        delay = self.backoff[0]
        while True:
            try:
                before = self._roots
                rev = await self._load_roots()
                if self._roots != before:
                    on_change(self._roots)
                delay = self.backoff[0]
                async for batch in self.client.watch(key, start_revision=rev + 1):
                    for ev in batch.events:
                        if ev.kind == "put" and self._take_quietly(ev.kv.value):
                            on_change(self._roots)
            except (EtcdError, CertificateUnavailable) as exc:
                log.warning("trust bundle watch: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.backoff[1])

    def _take_quietly(self, value: bytes) -> bool:
        try:
            return self._take(Bundle.from_json(value))
        except RotationError as exc:
            log.error("trust bundle in etcd rejected, keeping the current one: %s", exc)
            return False


def _json_object(data: bytes) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CertificateUnavailable(f"signer answer: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CertificateUnavailable(f"signer answer: expected a JSON object, got {data[:80]!r}")
    return doc


def signed_by(cert: WorkloadCert, root_pem: bytes) -> bool:
    """Whether `root_pem` signed the top of the cert's chain (the leaf when it has none)."""
    top = x509.load_pem_x509_certificates(cert.cert_pem + cert.chain_pem)[-1]
    try:
        top.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def apply_bundle(certs: CertificateManager, roots_pem: bytes) -> int:
    """A node's reaction to a new bundle: new handshakes verify against it at once; leaves not
    signed by its first root are renewed now. Returns how many were renewed."""
    certs.replace_roots(roots_pem)
    first = split_pem(roots_pem)[0]
    return await certs.renew_all(lambda c: not signed_by(c, first))
