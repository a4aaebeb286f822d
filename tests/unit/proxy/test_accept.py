"""The pure parts of zt/proxy/accept.py: caps, the backoff schedule (fake clock), limits
validation, tickets, and the loop exception handler's counting and rate limiting."""

from __future__ import annotations

import asyncio
import logging

import pytest

from zt.errors import UsageError
from zt.proxy.accept import (
    REFUSED_GROUP,
    REFUSED_SOURCE,
    REFUSED_TOTAL,
    AcceptLimits,
    AcceptMetrics,
    Backoff,
    ConnectionGroup,
    Ticket,
    loop_exception_handler,
)
from zt.telemetry.metrics import Registry


def group(**limits: int) -> ConnectionGroup:
    return ConnectionGroup("pod-a", AcceptLimits(**limits))  # type: ignore[arg-type]


def test_group_refuses_past_max_connections_and_admits_again_after_a_release() -> None:
    g = group(max_connections=3)
    assert [g.admit("10.0.0.1", pre_auth=False) for _ in range(3)] == [None, None, None]
    assert g.admit("10.0.0.2", pre_auth=False) == REFUSED_GROUP
    assert g.open == 3
    g.release()
    assert g.admit("10.0.0.2", pre_auth=False) is None


def test_half_open_cap_per_source_leaves_other_sources_alone() -> None:
    g = group(half_open_per_source=2, half_open_total=10)
    assert g.admit("10.0.0.1", pre_auth=True) is None
    assert g.admit("10.0.0.1", pre_auth=True) is None
    assert g.admit("10.0.0.1", pre_auth=True) == REFUSED_SOURCE
    assert g.admit("10.0.0.2", pre_auth=True) is None
    assert (g.half_open, g.open) == (3, 3)  # the refusal took nothing


def test_half_open_total_cap_counts_every_source() -> None:
    g = group(half_open_per_source=5, half_open_total=3)
    for source in ("a", "b", "c"):
        assert g.admit(source, pre_auth=True) is None
    assert g.admit("d", pre_auth=True) == REFUSED_TOTAL


def test_authentication_frees_the_half_open_slot_but_not_the_connection_slot() -> None:
    g = group(half_open_per_source=1, max_connections=10)
    assert g.admit("10.0.0.1", pre_auth=True) is None
    assert g.admit("10.0.0.1", pre_auth=True) == REFUSED_SOURCE
    g.authenticated("10.0.0.1")
    assert g.half_open_from("10.0.0.1") == 0
    assert (g.half_open, g.open) == (0, 1)
    assert g.admit("10.0.0.1", pre_auth=True) is None


def test_source_table_forgets_sources_with_nothing_in_flight() -> None:
    g = group(half_open_per_source=100, half_open_total=100_000)
    for i in range(1000):
        g.admit(f"10.0.{i // 256}.{i % 256}", pre_auth=True)
    for i in range(1000):
        g.authenticated(f"10.0.{i // 256}.{i % 256}")
    assert len(g._by_source) == 0  # bounded memory: no entry per source ever seen


def test_plaintext_connections_take_no_half_open_slot() -> None:
    g = group(half_open_total=1)
    assert g.admit("x", pre_auth=True) is None
    assert g.admit("y", pre_auth=False) is None  # a plaintext listener of the same pod
    assert (g.half_open, g.open) == (1, 2)


def test_ticket_gives_each_slot_back_once() -> None:
    g = group()
    metrics = AcceptMetrics()
    assert g.admit("s", pre_auth=True) is None
    ticket = Ticket(g, "s", True, metrics)
    ticket.authenticated()
    ticket.authenticated()
    ticket.release()
    ticket.release()
    assert (g.half_open, g.open) == (0, 0)


def test_ticket_release_before_authentication_frees_both_slots() -> None:
    g = group()
    assert g.admit("s", pre_auth=True) is None
    Ticket(g, "s", True, AcceptMetrics()).release()
    assert (g.half_open, g.open, g.half_open_from("s")) == (0, 0, 0)


def test_backoff_doubles_up_to_the_maximum_and_starts_over_after_a_success() -> None:
    backoff = Backoff(initial=0.05, maximum=1.0)
    now = 100.0
    delays = [backoff.failed(now) - now for _ in range(7)]
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.succeeded()
    assert backoff.failed(200.0) == pytest.approx(200.05)


@pytest.mark.parametrize(
    ("field", "value"),
    [("handshake_timeout", 0.0), ("half_open_per_source", 0), ("max_connections", -1)],
)
def test_limits_refuse_non_positive_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(UsageError, match=rf"{field}: got {value!r}, expected > 0"):
        AcceptLimits(**{field: value})  # type: ignore[arg-type]


def test_limits_refuse_a_backoff_maximum_below_its_start() -> None:
    with pytest.raises(UsageError, match=r"backoff_max: got 0\.01"):
        AcceptLimits(backoff_initial=0.1, backoff_max=0.01)


def test_metrics_export_refusals_and_open_connections_per_pod() -> None:
    registry = Registry()
    metrics = AcceptMetrics(registry)
    g = group(max_connections=1)
    g.admit("s", pre_auth=False)
    metrics.opened(g)
    metrics.refused(g.name, REFUSED_GROUP)
    metrics.handshake_timeout(g.name)
    text = registry.render()
    assert 'zt_connections_open{pod="pod-a"} 1' in text
    assert 'zt_accept_refused_total{pod="pod-a",reason="max_connections"} 1' in text
    assert 'zt_handshake_timeouts_total{pod="pod-a"} 1' in text


def test_loop_exception_handler_counts_every_event_and_logs_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = AcceptMetrics()
    handler = loop_exception_handler(metrics)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="zt.proxy.accept"):
            for _ in range(1000):
                try:
                    raise OSError(24, "Too many open files")
                except OSError as exc:
                    handler(loop, {"message": "unit: accept failed", "exception": exc})
    finally:
        loop.close()
    assert metrics.counts["loop:OSError"] == 1000
    lines = [r for r in caplog.records if "unit: accept failed" in r.getMessage()]
    assert len(lines) == 1
    assert "Too many open files at " in lines[0].getMessage()  # where: file and line
    assert lines[0].exc_info is None  # no traceback storm: one line
