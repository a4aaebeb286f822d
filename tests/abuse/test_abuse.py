"""One test per abuse class, against `zt hbone serve` and against a lab node's :15008.

Each test runs one bounded attack (tests/abuse/attacks.py, at most 10 s, from its own process) and
asserts what an operator needs from the server:
- it survives (the process is alive and a new tunnel works after the attack);
- its RSS never grows by more than RSS_BOUND_MIB over the attack (sampled every 50 ms);
- a legitimate tunnel opened during the attack, from another source address, gets 200 and its
  bytes echoed within LEGIT_WITHIN_S (TCP connect, TLS, CONNECT and the echo included);
- its fd count is back at the pre-attack baseline (FD_SLACK of noise) once the attacker left;
- where the attack goes past an HTTP/2 limit: a few log lines name the attacker, and the node's
  zt_hbone_limit_exceeded_total counts it.
docs/security.md lists the defence each attack meets and the figures measured here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.abuse.attacks import Probe
from tests.abuse.targets import NodeTarget, Outcome, ServeTarget, Target, attack, node_target
from tests.abuse.targets import serve_target as start_serve
from tests.node.lab import running_lab

pytestmark = pytest.mark.root

RSS_BOUND_MIB = 40.0  # tens of MiB: one attacker may cost some buffers, never hundreds of MiB
LEGIT_WITHIN_S = 1.0
FD_SLACK = 2  # e.g. a log file reopened; an attacker's connections leave dozens or thousands
PAYLOAD = b"legit tunnel\n"
MAX_LIMIT_LINES = 20  # per attack: one line per (limit, peer) per interval, not one per frame
PRE_AUTH_DEADLINE_S = 5.0  # "a few seconds": the longest pre-authentication deadline accepted


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeTarget]:
    with start_serve(tmp_path_factory.mktemp("abuse-serve")) as target:
        yield target


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeTarget]:
    with (
        running_lab("ab") as lab,
        node_target(lab, tmp_path_factory.mktemp("abuse-node")) as target,
    ):
        yield target


@pytest.fixture(params=["serve", "node"])
def target(request: pytest.FixtureRequest) -> Target:
    t = request.getfixturevalue(request.param)
    assert isinstance(t, Target)
    return t


def _tunnel_ok(p: Probe) -> bool:
    return p.status == 200 and p.echoed == PAYLOAD


def judge(o: Outcome, extra: list[str] | None = None) -> None:
    """All four properties (and `extra` failures), every failure named in one message with the
    figures."""
    failures = list(extra or [])
    if not o.alive:
        failures.append("the server died")
    if not _tunnel_ok(o.after):
        failures.append(f"no working tunnel after the attack: {o.after}")
    if not (_tunnel_ok(o.during) and o.during.seconds <= LEGIT_WITHIN_S):
        failures.append(f"legitimate tunnel during the attack: {o.during}")
    if o.rss_growth_mib > RSS_BOUND_MIB:
        failures.append(f"RSS +{o.rss_growth_mib:.1f} MiB > {RSS_BOUND_MIB} MiB")
    if o.fds_after > o.base_fds + FD_SLACK or o.fds_after < 0:
        failures.append(
            f"fds {o.fds_after} not back to {o.base_fds} (+{FD_SLACK}) {o.fds_settle_s} s "
            f"after the attacker left (peak {o.peak_fds})"
        )
    assert _tunnel_ok(o.before), f"the server did not work before the attack: {o.before}"
    assert not failures, (
        f"{o.attack} against {o.target}: " + "; ".join(failures) + f"\nattacker: {o.tally}"
        f"\nattacker rc={o.attacker_rc} stderr: {o.attacker_err[-600:]}"
    )


def limit_observed(o: Outcome, attacker_id: str) -> list[str]:
    """An HTTP/2 limit the attack went past is visible: log lines naming the attacker (a few,
    however many frames it sent: they are rate-limited) and, where the server has metrics, its
    zt_hbone_limit_exceeded_total grew."""
    failures = []
    if not 1 <= o.limit_log_lines <= MAX_LIMIT_LINES:
        failures.append(
            f"{o.limit_log_lines} log lines name {attacker_id} and a limit "
            f"(expected 1..{MAX_LIMIT_LINES})"
        )
    if o.limit_metric_delta is not None and o.limit_metric_delta < 1:
        failures.append(f"zt_hbone_limit_exceeded_total grew by {o.limit_metric_delta}")
    return failures


def run(target: Target, tmp: Path, name: str, *, hits_limit: bool = True, **args: Any) -> None:
    o = attack(target, name, int(RSS_BOUND_MIB * 1024), FD_SLACK, tmp, **args)
    judge(o, limit_observed(o, target.attacker_id) if hits_limit else [])


def test_rapid_reset_against_live_target(target: Target, tmp_path: Path) -> None:
    """10,000 CONNECT + RST_STREAM pairs (CVE-2023-44487), streams to the echo target."""
    run(target, tmp_path, "rapid_reset", count=10_000, seconds=5.0)


def test_rapid_reset_against_blackholed_port(target: Target, tmp_path: Path) -> None:
    """The same against a port whose SYNs are dropped: every dial the server starts would hang."""
    run(target, tmp_path, "rapid_reset", blackhole=True, count=10_000, seconds=5.0)


def test_continuation_flood(target: Target, tmp_path: Path) -> None:
    """8 connections, each HEADERS without END_HEADERS then up to 64 MiB of CONTINUATION frames
    as large as the server advertised (1 MiB)."""
    run(target, tmp_path, "continuation_flood", conns=8, per_conn=64 << 20, seconds=4.0)


def test_frame_above_advertised_size(target: Target, tmp_path: Path) -> None:
    """4 connections, each a DATA frame header declaring 16 MiB (1 MiB advertised), slow body."""
    run(target, tmp_path, "oversized_frame", conns=4, seconds=4.0)


def test_tiny_data_frames_with_window_updates(target: Target, tmp_path: Path) -> None:
    """3 batches of ~240 KB of 1-byte DATA frames interleaved with WINDOW_UPDATE frames."""
    run(
        target, tmp_path, "tiny_data", hits_limit=False, batches=3, batch_bytes=240_000, seconds=6.0
    )


def test_settings_flood_over_open_tunnels(target: Target, tmp_path: Path) -> None:
    """Up to 400,000 SETTINGS frames while 190 tunnels are open on the connection."""
    run(target, tmp_path, "settings_flood", tunnels=190, count=400_000, seconds=5.0)


def test_ping_flood_never_reading(target: Target, tmp_path: Path) -> None:
    """PINGs (and guessed PING ACKs) without ever reading the socket."""
    run(target, tmp_path, "ping_flood", count=1_000_000, seconds=4.0)


def test_huffman_coded_megabyte_header(target: Target, tmp_path: Path) -> None:
    """80 CONNECTs from 8 connections at once (80 connections at most), each with one header
    whose Huffman-coded value decodes to 1 MiB."""
    run(
        target,
        tmp_path,
        "huffman_header",
        size=1 << 20,
        count=80,
        conns=8,
        max_conns=80,
        seconds=4.0,
    )


def test_connections_that_never_authenticate(target: Target, tmp_path: Path) -> None:
    """50 TLS connections that never send the HTTP/2 preface, 500 TCP connections that never send
    a ClientHello and 500 that send one and stop, from one source, held 8 s (the attack ends
    sooner once the server has closed every one). Beyond the four properties: the server has
    closed (nearly) every one of them by then, because its deadlines for the handshake and the
    preface are a few seconds (PRE_AUTH_DEADLINE_S at most)."""
    o = attack(
        target, "pre_auth", int(RSS_BOUND_MIB * 1024), FD_SLACK, tmp_path,
        no_preface=50, idle=500, half=500, seconds=PRE_AUTH_DEADLINE_S + 3.0,
    )  # fmt: skip
    notes = o.tally.get("notes", {})
    extra = []
    for group in ("no_preface", "idle", "half"):
        opened = notes.get(f"{group}_opened", 0)
        closed = notes.get(f"{group}_closed_by_server", 0)
        if opened == 0 or closed < 0.95 * opened:
            extra.append(
                f"{group}: the server closed {closed} of {opened} within "
                f"{PRE_AUTH_DEADLINE_S + 3.0:g} s"
            )
    judge(o, extra)
