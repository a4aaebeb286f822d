"""CertificateManager with a fake clock: caching, half-life renewal, coalescing, forgetting.

The source is the real embedded CA behind a counting wrapper (not a mock: it signs real leaves);
its optional gate holds issuance open so tests can look at what others see meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import CertificateUnavailable
from zt.identity.manager import RETRY_AFTER, CertificateManager
from zt.identity.sources import StaticCertificateSource
from zt.identity.spiffe import SpiffeId

T = TypeVar("T")
T0 = 1_900_000_000.0
DAY = 86400.0
A = SpiffeId("cluster.local", "ns", "a")
B = SpiffeId("cluster.local", "ns", "b")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingSource:
    """Wraps a real CertificateAuthority; counts calls, can be held open or made to fail."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.calls: list[tuple[SpiffeId, float]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def issue(self, identity: SpiffeId, *, now: float, lifetime: float = DAY) -> WorkloadCert:
        self.calls.append((identity, now))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        return self.ca.issue(identity, now=now, lifetime=lifetime)


@pytest.fixture
def source(tmp_path: Path) -> CountingSource:
    return CountingSource(CertificateAuthority.init(tmp_path / "ca", now=T0 - DAY))


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 20)

    return asyncio.run(bounded())


async def _until_entered(src: CountingSource) -> None:
    assert await asyncio.to_thread(src.entered.wait, 10)
    src.entered.clear()


def test_cached_until_half_life_then_renewed(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        first = await mgr.get(A)
        assert first.not_before == T0 and first.not_after == T0 + DAY
        clock.advance(DAY / 2 - 1)
        assert await mgr.get(A) is first
        clock.advance(1)  # exactly half-life
        second = await mgr.get(A)
        assert second is not first
        assert second.not_before == T0 + DAY / 2
        assert second.cert_pem != first.cert_pem and second.key_pem != first.key_pem
        assert await mgr.get(A) is second
        assert [now for _, now in source.calls] == [T0, T0 + DAY / 2]

    run(scenario)
    assert mgr.issued_count == 2


def test_old_cert_served_while_renewal_runs(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        old = await mgr.get(A)
        clock.advance(DAY * 0.6)
        source.gate = threading.Event()
        try:
            renewer = asyncio.create_task(mgr.get(A))  # the first caller past half-life renews
            await _until_entered(source)
            others = await asyncio.gather(*(mgr.get(A) for _ in range(20)))
            assert all(c is old for c in others)  # still valid: served without waiting
            assert not renewer.done()
        finally:
            source.gate.set()
        new = await renewer
        assert new is not old and new.not_before == T0 + DAY * 0.6
        assert await mgr.get(A) is new
        assert len(source.calls) == 2

    run(scenario)


def test_concurrent_first_requests_coalesce(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        source.gate = threading.Event()
        try:
            waiters = [asyncio.create_task(mgr.get(A)) for _ in range(50)]
            waiters += [asyncio.create_task(mgr.get(B)) for _ in range(5)]
            await asyncio.sleep(0.05)
            assert not any(w.done() for w in waiters)
        finally:
            source.gate.set()
        got = await asyncio.gather(*waiters)
        assert len({id(c) for c in got[:50]}) == 1
        assert len({id(c) for c in got[50:]}) == 1
        assert got[0].identity == A and got[50].identity == B
        assert sorted(i.service_account for i, _ in source.calls) == ["a", "b"]

    run(scenario)


def test_expired_cert_makes_everyone_wait_for_one_issuance(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        old = await mgr.get(A)
        clock.advance(DAY + 1)  # the node slept through the whole lifetime
        got = await asyncio.gather(*(mgr.get(A) for _ in range(10)))
        assert all(c is got[0] for c in got)
        assert got[0] is not old and got[0].valid_at(clock())
        assert len(source.calls) == 2

    run(scenario)


def test_one_waiter_cancelled_does_not_cancel_the_issuance(source: CountingSource) -> None:
    mgr = CertificateManager(source, clock=FakeClock())

    async def scenario() -> None:
        source.gate = threading.Event()
        try:
            impatient = asyncio.create_task(mgr.get(A))
            patient = asyncio.create_task(mgr.get(A))
            await _until_entered(source)
            impatient.cancel()
            await asyncio.sleep(0)
        finally:
            source.gate.set()
        cert = await patient
        assert impatient.cancelled()
        assert cert.identity == A
        assert mgr.cached(A) is cert
        assert len(source.calls) == 1

    run(scenario)


def test_forget(source: CountingSource) -> None:
    mgr = CertificateManager(source, clock=FakeClock())

    async def scenario() -> None:
        first = await mgr.get(A)
        await mgr.get(B)
        mgr.forget(A)
        assert mgr.identities() == [B]
        assert mgr.cached(A) is None
        again = await mgr.get(A)
        assert again is not first
        assert len(source.calls) == 3
        mgr.forget(SpiffeId("cluster.local", "never", "seen"))  # no error

    run(scenario)


def test_forget_during_issuance_answers_waiters_but_caches_nothing(
    source: CountingSource,
) -> None:
    mgr = CertificateManager(source, clock=FakeClock())

    async def scenario() -> None:
        source.gate = threading.Event()
        try:
            waiter = asyncio.create_task(mgr.get(A))
            await _until_entered(source)
            mgr.forget(A)
        finally:
            source.gate.set()
        cert = await waiter
        assert cert.identity == A
        assert mgr.cached(A) is None
        assert mgr.identities() == []

    run(scenario)


def test_failed_renewal_keeps_serving_the_valid_cert_and_backs_off(
    source: CountingSource, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        old = await mgr.get(A)
        clock.advance(DAY / 2)
        source.fail = CertificateUnavailable("CA unreachable")
        with caplog.at_level("WARNING", logger="zt.identity.manager"):
            assert await mgr.get(A) is old
        assert len(source.calls) == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"certificate issuance for {A} failed: CA unreachable"
        ]
        clock.advance(RETRY_AFTER - 1)
        assert await mgr.get(A) is old
        assert len(source.calls) == 2  # backing off
        clock.advance(1)
        source.fail = None
        new = await mgr.get(A)
        assert new is not old
        assert len(source.calls) == 3

    run(scenario)


def test_failure_with_nothing_valid_reaches_every_waiter(source: CountingSource) -> None:
    mgr = CertificateManager(source, clock=FakeClock())

    async def scenario() -> None:
        source.fail = CertificateUnavailable("no certificate for spiffe://cluster.local/ns/ns/sa/a")
        results = await asyncio.gather(*(mgr.get(A) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, CertificateUnavailable) for r in results)
        assert len(source.calls) == 1

    run(scenario)


def test_renew_due(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        a = await mgr.get(A)
        clock.advance(DAY / 4)
        b = await mgr.get(B)
        clock.advance(DAY / 4)  # A at half-life, B at quarter-life
        assert await mgr.renew_due() == 1
        assert mgr.cached(A) is not a
        assert mgr.cached(B) is b

    run(scenario)


def test_next_renewal_is_the_earliest_half_life_or_back_off(source: CountingSource) -> None:
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock, lifetime=3600)

    async def scenario() -> None:
        assert mgr.next_renewal() is None
        a = await mgr.get(A)
        clock.advance(600)
        await mgr.get(B)
        assert mgr.next_renewal() == a.renew_at  # A's half-life comes first
        clock.now = a.renew_at
        source.fail = CertificateUnavailable("CA unreachable")
        assert await mgr.get(A) is a  # renewal failed: A backs off, B is due later
        assert mgr.next_renewal() == min(clock.now + RETRY_AFTER, mgr.cached(B).renew_at)  # type: ignore[union-attr]

    run(scenario)


def test_lifetime_is_passed_to_the_source(source: CountingSource) -> None:
    mgr = CertificateManager(source, clock=FakeClock(), lifetime=3600)
    cert = run(lambda: mgr.get(A))
    assert cert.lifetime == 3600


def test_static_source_serves_operator_files(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "operator-ca", now=T0 - DAY)
    files = tmp_path / "certs"
    files.mkdir()
    ca.issue(A, now=T0).write(files / "a")
    clock = FakeClock(T0 + 10)
    src = StaticCertificateSource(files)
    mgr = CertificateManager(src, clock=clock)

    async def scenario() -> None:
        a = await mgr.get(A)
        assert a.identity == A and a.roots_pem == ca.roots_pem
        with pytest.raises(CertificateUnavailable, match=f"no certificate for {B} in {files}"):
            await mgr.get(B)
        # past half-life and not rotated yet: keep serving, re-read only every RETRY_AFTER
        clock.advance(DAY / 2)
        assert (await mgr.get(A)).cert_pem == a.cert_pem
        before = mgr.issued_count
        assert (await mgr.get(A)).cert_pem == a.cert_pem
        assert mgr.issued_count == before
        # the operator rotates the file: picked up at the next attempt
        rotated = ca.issue(A, now=clock())
        rotated.write(files / "a")
        clock.advance(RETRY_AFTER)
        assert (await mgr.get(A)).cert_pem == rotated.cert_pem

    run(scenario)


def test_static_source_refuses_expired_files(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=T0 - 3 * DAY)
    ca.issue(A, now=T0 - 2 * DAY).write(tmp_path / "a")
    with pytest.raises(CertificateUnavailable, match="is not valid now"):
        StaticCertificateSource(tmp_path).issue(A, now=T0)


def test_static_source_with_shared_bundle(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", now=T0)
    pem, _, bundle = ca.issue(A, now=T0).write(tmp_path / "certs-a")
    shared = tmp_path / "roots.pem"
    bundle.rename(shared)
    cert = StaticCertificateSource(tmp_path, bundle=shared).issue(A, now=T0 + 1)
    assert cert.roots_pem == ca.roots_pem
    assert pem.exists()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.floats(min_value=0, max_value=DAY * 0.8), min_size=1, max_size=12))
def test_served_cert_is_always_valid_and_stable_before_half_life(
    source: CountingSource, steps: list[float]
) -> None:
    """Whatever the clock does, `get` serves a cert valid now; before half-life it is the same
    object as last time; a new one appears only at/after half-life."""
    clock = FakeClock()
    mgr = CertificateManager(source, clock=clock)

    async def scenario() -> None:
        last = await mgr.get(A)
        for step in steps:
            clock.advance(step)
            cert = await mgr.get(A)
            assert cert.valid_at(clock())
            if clock() < last.renew_at:
                assert cert is last
            else:
                assert cert is not last and cert.not_before == int(clock())
            last = cert

    run(scenario)
