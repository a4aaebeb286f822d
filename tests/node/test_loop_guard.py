"""The loop guard in the netns lab: real `zt run`, real capture.

Before the guard, one plaintext connection from outside to a pod's :15006, held 4 s, took its node
from ~53 to 8,100-16,948 fds and about +114 MB RSS (zt delivered it to pod:15006, which sk_lookup
handed back to zt, and so on). Here every zt port of a pod, and of the node, is held open at once
from the host outside the mesh; the node must stay flat: fds within +20 of the baseline, RSS within
+10 MiB."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, handed_on, hbone_status, metric
from zt.errors import UsageError
from zt.lab.apps import connect_only, exchange

pytestmark = pytest.mark.root

ZT_PORTS = (15001, 15006, 15008, 15080, 15020, 15021, 15000, 15053)
REFUSED = "zt_loop_guard_refused_total"
HOLD = 4.0  # seconds every connection is held open, as in the measurement above
FD_BOUND = 20
RSS_BOUND_KIB = 10 * 1024


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def _open_all(lab: Lab, targets: list[tuple[str, int]]) -> list[socket.socket]:
    """One connection per target from the outside host, each sending a few bytes; a target that
    refuses (nothing listens there) is skipped and named."""
    held, refused = [], []
    for host, port in targets:
        try:
            sock = connect_only(lab.plan.external_netns, host, port, timeout=5.0)
        except (OSError, UsageError) as exc:
            refused.append(f"{host}:{port} ({exc})")
            continue
        held.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print("not connected:", ", ".join(refused) or "none")
    return held


def _watch(lab: Lab, node: str, seconds: float) -> tuple[int, int]:
    """The node's highest fd count and RSS (KiB) seen over `seconds`, sampled every 0.1 s."""
    fds, rss = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fds, rss = max(fds, lab.fds(node)), max(rss, lab.rss_kib(node))
        time.sleep(0.1)
    return fds, rss


def test_connections_to_every_zt_port_leave_the_node_flat(lab: Lab) -> None:
    pod = lab.pod("pod1-1")
    node = lab.plan.node("node1")
    refused_before = metric(lab.metrics("node1"), REFUSED, path="plaintext")
    base_fds, base_rss = lab.fds("node1"), lab.rss_kib("node1")
    targets = [(str(pod.ipv4), p) for p in ZT_PORTS]
    targets += [(str(pod.ipv6), p) for p in ZT_PORTS]
    targets += [(str(node.link_ipv4), p) for p in ZT_PORTS]
    started = time.monotonic()
    held = _open_all(lab, targets)
    try:
        peak_fds, peak_rss = _watch(lab, "node1", HOLD - (time.monotonic() - started))
    finally:
        for sock in held:
            sock.close()
    after = lab.metrics("node1")
    print(
        f"node1 fds {base_fds} -> peak {peak_fds}, RSS {base_rss} -> peak {peak_rss} KiB "
        f"({len(held)} of {len(targets)} connections opened and held {HOLD:g} s)"
    )
    assert peak_fds - base_fds <= FD_BOUND, (base_fds, peak_fds)
    assert peak_rss - base_rss <= RSS_BOUND_KIB, (base_rss, peak_rss)
    # every pod port but 15008 (the HBONE listener, where plaintext fails TLS) reaches :15006
    refused = metric(after, REFUSED, path="plaintext") - refused_before
    assert refused >= 2 * (len(ZT_PORTS) - 1), refused


def test_refusal_is_an_access_record_with_connect_and_a_reset(lab: Lab) -> None:
    pod = lab.pod("pod1-1")
    offset = lab.offsets()["node1"]
    ex = exchange(lab.plan.external_netns, str(pod.ipv4), 15006, b"hello", timeout=5.0)
    assert ex.received == b""  # reset, never delivered anywhere
    rec = lab.wait_record("node1", offset, direction="inbound", dst__addr=f"{pod.ipv4}:15006")
    assert rec.get("response_flags") == "CONNECT", rec
    assert "loop guard" in rec.get("error"), rec


@pytest.mark.parametrize("port", ZT_PORTS)
def test_connect_to_each_own_port_gets_400(lab: Lab, port: int) -> None:
    src, dst = lab.pod("pod2-1"), lab.pod("pod1-1")
    before = metric(lab.metrics("node1"), REFUSED, path="hbone")
    assert hbone_status(lab, src, dst, str(dst.ipv4), port) == 400
    assert metric(lab.metrics("node1"), REFUSED, path="hbone") - before == 1


def test_app_connection_to_a_same_node_pods_zt_port_is_refused_locally(lab: Lab) -> None:
    """Captured in pod2-1, aimed at pod2-2:15006 (an address node2's zt listens on)."""
    src, dst = lab.pod("pod2-1"), lab.pod("pod2-2")
    before = metric(lab.metrics("node2"), REFUSED, path="outbound")
    offset = lab.offsets()["node2"]
    ex = exchange(src.netns, str(dst.ipv4), 15006, b"hello", timeout=5.0)
    assert ex.received == b""
    assert metric(lab.metrics("node2"), REFUSED, path="outbound") - before == 1
    rec = lab.wait_record("node2", offset, direction="outbound", dst__addr=f"{dst.ipv4}:15006")
    assert rec.get("response_flags") == "CONNECT", rec
    assert "loop guard" in rec.get("error"), rec


def test_app_connection_to_a_remote_pods_zt_port_is_refused_by_its_inbound(lab: Lab) -> None:
    """Captured in pod1-1, aimed at pod2-1:15006: carried over HBONE, refused 400 by node2."""
    src, dst = lab.pod("pod1-1"), lab.pod("pod2-1")
    before = metric(lab.metrics("node2"), REFUSED, path="hbone")
    offset = lab.offsets()["node1"]
    ex = exchange(src.netns, str(dst.ipv4), 15006, b"hello", timeout=5.0)
    assert ex.received == b""
    assert metric(lab.metrics("node2"), REFUSED, path="hbone") - before == 1
    rec = lab.wait_record(
        "node1", offset, direction="outbound", dst__hbone_addr=f"{dst.ipv4}:15006"
    )
    assert rec.get("response_flags") == "CONNECT", rec  # 400 (zt/node/services.py STATUS_FLAGS)
