"""The node's renewal loop renews at half-life, also a leaf cached while it slept for a later one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.manager import CertificateManager
from zt.identity.spiffe import SpiffeId
from zt.node.services import renew_loop

LONG = SpiffeId("cluster.local", "ns", "long")
SHORT = SpiffeId("cluster.local", "ns", "short")


class Lifetimes:
    """The embedded CA, with a lifetime per identity (a rotation's switch caches short leaves)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.issued: list[SpiffeId] = []

    def issue(self, identity: SpiffeId, *, now: float, lifetime: float = 0.0) -> WorkloadCert:
        self.issued.append(identity)
        return self.ca.issue(identity, now=now, lifetime=60.0 if identity == LONG else 2.0)


def test_a_short_leaf_cached_while_the_loop_sleeps_is_renewed_at_its_half_life(
    tmp_path: Path,
) -> None:
    source = Lifetimes(CertificateAuthority.init(tmp_path / "ca"))
    certs = CertificateManager(source)

    async def scenario() -> None:
        await certs.get(LONG)  # due in 30 s: the loop goes to sleep for that
        loop = asyncio.create_task(renew_loop(certs, "test"))
        try:
            await asyncio.sleep(0.2)
            first = await certs.get(SHORT)  # 2 s leaf, due in 1 s
            deadline = time.monotonic() + 5.0
            while certs.cached(SHORT) is first and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            renewed = certs.cached(SHORT)
            assert renewed is not first, "the 2 s leaf was not renewed within 5 s"
            assert renewed is not None and renewed.valid_at(time.time())
            assert source.issued.count(LONG) == 1  # nothing else was renewed early
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 20))
