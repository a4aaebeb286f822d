"""Per-node certificate cache (docs/design.md §3: renewed at half-life, cached per identity).

Semantics of `get(identity)` at clock time `now` (the clock is injected):
  * a cached cert before its half-life is returned as is (the same object);
  * at/after half-life the first caller starts one renewal and awaits it; callers arriving while
    that renewal runs get the old cert at once, as long as it is still valid ("old cert still served
    until the new one is ready"); once the renewal lands everyone gets the new cert;
  * with no cached cert, or an expired one, every caller awaits the one in-flight issuance
    (concurrent requests coalesce into one `source.issue` call);
  * if a renewal fails while the old cert is still valid, the old cert is returned and the next
    renewal is attempted no sooner than RETRY_AFTER seconds later; with nothing valid the error
    propagates (as a ZtError from the source). The same back-off applies when a source hands back a
    cert already past half-life (an operator's pre-issued file that was not rotated yet).
`forget(identity)` drops the cert; an issuance in flight for it still answers its waiters but is not
cached. A synchronous source runs in a worker thread (`asyncio.to_thread`): keygen + signing + the
issued.jsonl append take 0.3-0.6 ms, short, but file I/O must not stall the loop. A source whose
`issue` is a coroutine function (the fleet's signer over etcd) is awaited on the loop.
`replace_roots` swaps a new trust bundle into every cached cert (new handshakes verify against it;
contexts are cached per WorkloadCert, so a new cert object means a new context); `renew_all`
re-issues selected certs at once (a root rotation moves leaves to the new root).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from typing import Protocol

from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId

log = logging.getLogger(__name__)
DEFAULT_LIFETIME = 86400.0
RETRY_AFTER = 5.0


class CertificateSource(Protocol):
    """Where certificates come from: the embedded CA, or an operator's pre-issued files."""

    def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = DEFAULT_LIFETIME
    ) -> WorkloadCert: ...


class AsyncCertificateSource(Protocol):
    """A source that asks a remote signer (zt/fleet/certsource.py): awaited, not threaded."""

    async def issue(
        self, identity: SpiffeId, *, now: float, lifetime: float = DEFAULT_LIFETIME
    ) -> WorkloadCert: ...


class CertificateManager:
    """Caches one WorkloadCert per identity; asyncio-friendly, single event loop."""

    def __init__(
        self,
        source: CertificateSource | AsyncCertificateSource,
        *,
        clock: Callable[[], float] = time.time,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        self.source = source
        self.clock = clock
        self.lifetime = lifetime
        self._certs: dict[SpiffeId, WorkloadCert] = {}
        self._inflight: dict[SpiffeId, asyncio.Task[WorkloadCert]] = {}
        self._retry_at: dict[SpiffeId, float] = {}
        # set whenever a certificate is cached: a renewal loop asleep until the old next due time
        # wakes for a new, shorter-lived one (a rotation's switch caches leaves of a new lifetime)
        self.cache_changed = asyncio.Event()
        self.issued_count = 0  # issuances that completed (for metrics and tests)

    async def get(self, identity: SpiffeId) -> WorkloadCert:
        """The identity's current certificate; see the module docstring for the exact semantics."""
        now = self.clock()
        cached = self._certs.get(identity)
        if cached is not None and now < cached.renew_at:
            return cached
        usable = cached is not None and cached.valid_at(now)
        if usable and (identity in self._inflight or now < self._retry_at.get(identity, 0.0)):
            assert cached is not None
            return cached  # someone is renewing (or just failed to): serve the old, still valid one
        task = self._inflight.get(identity) or self._start(identity, now)
        try:
            # shield: one caller giving up must not cancel the issuance the others wait on
            return await asyncio.shield(task)
        except Exception:
            if usable and cached is not None:
                return cached
            raise

    def _start(self, identity: SpiffeId, now: float) -> asyncio.Task[WorkloadCert]:
        task = asyncio.ensure_future(self._issue(identity, now))
        self._inflight[identity] = task
        return task

    async def _issue(self, identity: SpiffeId, now: float) -> WorkloadCert:
        me = asyncio.current_task()
        try:
            cert = await self._call_source(identity, now)
        except Exception as exc:
            if self._release(identity, me):
                self._retry_at[identity] = self.clock() + RETRY_AFTER
            log.warning("certificate issuance for %s failed: %s", identity, exc)
            raise
        except BaseException:
            self._release(identity, me)
            raise
        self.issued_count += 1
        log.info("certificate for %s valid until %.0f", identity, cert.not_after)
        if self._release(identity, me):  # not forgotten meanwhile: cache it
            self._certs[identity] = cert
            self.cache_changed.set()
            self._retry_at.pop(identity, None)
            if self.clock() >= cert.renew_at:  # a pre-issued file not rotated yet: ask again later
                self._retry_at[identity] = self.clock() + RETRY_AFTER
        return cert

    async def _call_source(self, identity: SpiffeId, now: float) -> WorkloadCert:
        issue = self.source.issue
        if inspect.iscoroutinefunction(issue):
            cert: WorkloadCert = await issue(identity, now=now, lifetime=self.lifetime)
            return cert
        return await asyncio.to_thread(issue, identity, now=now, lifetime=self.lifetime)  # type: ignore[arg-type]

    def _release(self, identity: SpiffeId, task: object) -> bool:
        """End `task`'s in-flight slot; False when `forget` already took it away."""
        if self._inflight.get(identity) is not task:
            return False
        del self._inflight[identity]
        return True

    def forget(self, identity: SpiffeId) -> None:
        """The workload left the node: drop its certificate (a pending issuance still answers its
        waiters but its result is not cached)."""
        self._certs.pop(identity, None)
        self._retry_at.pop(identity, None)
        self._inflight.pop(identity, None)

    async def renew_due(self) -> int:
        """Renew every cached certificate past its half-life (a node's periodic tick, so idle
        workloads stay fresh too). Returns how many were due."""
        now = self.clock()
        due = [i for i, c in self._certs.items() if now >= c.renew_at and i not in self._inflight]
        await asyncio.gather(*(self.get(i) for i in due), return_exceptions=True)
        return len(due)

    def next_renewal(self) -> float | None:
        """The clock time the next cached certificate is due (its half-life, or the end of a
        back-off after a failed renewal); None with nothing cached."""
        due = [max(c.renew_at, self._retry_at.get(i, 0.0)) for i, c in self._certs.items()]
        return min(due) if due else None

    def replace_roots(self, roots_pem: bytes) -> int:
        """A new trust bundle: every cached cert now carries `roots_pem`, so the next handshake
        builds a context verifying against it; open connections keep theirs. Returns the count."""
        changed = 0
        for identity, cert in list(self._certs.items()):
            if cert.roots_pem != roots_pem:
                self._certs[identity] = dataclasses.replace(cert, roots_pem=roots_pem)
                changed += 1
        return changed

    async def renew_all(self, select: Callable[[WorkloadCert], bool] = lambda _c: True) -> int:
        """Re-issue every cached cert `select` picks, now (not at half-life). The old cert is
        served until its successor lands; a failure keeps it and backs off like a renewal."""
        now = self.clock()
        chosen = [i for i, c in self._certs.items() if select(c) and i not in self._inflight]
        tasks = [self._start(i, now) for i in chosen]
        await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)
        return len(chosen)

    def identities(self) -> list[SpiffeId]:
        """Identities with a cached certificate, sorted."""
        return sorted(self._certs)

    def cached(self, identity: SpiffeId) -> WorkloadCert | None:
        return self._certs.get(identity)

    def held(self) -> list[tuple[str, str, WorkloadCert | None]]:
        """Every identity the manager knows, sorted, with ztunnel's certificate state (for
        /config_dump): "Available" with a cached cert (served during a renewal too),
        "Initializing" while its first issuance runs, "Unavailable: ..." after that failed."""
        known = sorted({*self._certs, *self._inflight, *self._retry_at})
        out: list[tuple[str, str, WorkloadCert | None]] = []
        for identity in known:
            cert = self._certs.get(identity)
            if cert is not None:
                state = "Available"
            elif identity in self._inflight:
                state = "Initializing"
            else:
                state = "Unavailable: issuance failed, retrying"
            out.append((str(identity), state, cert))
        return out
