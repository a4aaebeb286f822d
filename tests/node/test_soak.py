"""The node's promise: "A soak of 10,000 sequential tunnels shows no growth in open file descriptors or
in the BPF maps". Bounded: stops after SOAK_SECONDS whatever the count (and says how far it got).
ZT_SOAK_TUNNELS overrides the count (e.g. for a quick local run)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, handed_on, metric
from zt.capture.netns import run_in_netns
from zt.lab import mesh

pytestmark = pytest.mark.root

TUNNELS = int(os.environ.get("ZT_SOAK_TUNNELS", "10000"))
WARMUP = min(300, TUNNELS // 10)
SOAK_SECONDS = 420.0
FD_SLACK = 8  # pooled connections, a log rotation, timers: a few, never one per tunnel
MAP_SLACK = 8


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def tunnels(netns: str, host: str, count: int, deadline: float) -> tuple[int, int]:
    """count sequential app connections (64-byte echo each) from inside netns: (done, failed)."""

    def loop() -> tuple[int, int]:
        done = failed = 0
        payload = b"s" * 64
        while done < count and time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                try:
                    sock.connect((host, mesh.APP_PORT))
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)
                    got = b""
                    while chunk := sock.recv(4096):
                        got += chunk
                    failed += got != payload
                except OSError:
                    failed += 1
            done += 1
        return done, failed

    return run_in_netns(netns, loop, timeout=deadline - time.monotonic() + 30)


@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_sequential_tunnels_leak_no_fds_and_no_map_entries(lab: Lab) -> None:
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    start = time.monotonic()
    deadline = start + SOAK_SECONDS
    done, failed = tunnels(a.netns, str(b.ipv4), WARMUP, deadline)
    assert (done, failed) == (WARMUP, 0)
    time.sleep(1.0)  # let the last closes settle before the baseline
    fds = {n: lab.fds(n) for n in ("node1", "node2")}
    rss = {n: lab.rss_kib(n) for n in fds}
    maps = {n: lab.map_entries(n) for n in ("node1", "node2")}
    t0 = time.monotonic()

    done, failed = tunnels(a.netns, str(b.ipv4), TUNNELS - WARMUP, deadline)
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    rate = done / elapsed if elapsed else 0.0
    print(f"\n[soak] {done + WARMUP} tunnels, {failed} failed, {rate:.0f}/s, fds {fds} -> "
          f"{ {n: lab.fds(n) for n in fds} }, maps {maps} -> "
          f"{ {n: lab.map_entries(n) for n in maps} }, RSS KiB {rss} -> "
          f"{ {n: lab.rss_kib(n) for n in rss} }")  # fmt: skip
    assert failed == 0
    assert done == TUNNELS - WARMUP, (
        f"only {done + WARMUP} of {TUNNELS} tunnels in {SOAK_SECONDS:g} s ({rate:.0f}/s)"
    )
    # every tunnel closed: nothing tracked as live on the receiving node
    assert metric(lab.metrics("node2"), "zt_live_inbound_connections") == 0
    for node, baseline in fds.items():
        assert lab.fds(node) <= baseline + FD_SLACK, f"{node} fds grew from {baseline}"
        now = lab.map_entries(node)
        for name, count in maps[node].items():
            assert now[name] <= count + MAP_SLACK, f"{node} map {name}: {count} -> {now[name]}"
