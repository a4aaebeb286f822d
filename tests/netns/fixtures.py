"""Fixtures shared by tests/netns and tests/packets: a fresh topology and an enrolled pod per test.

Every fixture removes what it made in `finally` (netns, links, BPF attachments, routing), also when
the test fails. Capture is compiled once per process (zt.capture.loader caches it).
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import pytest

from tests.netns.topo import Topology, build
from zt.capture import Capture, ListenerSockets, Mode, PodCapture, parse_ips
from zt.capture.netns import open_listener


@dataclass
class Pod:
    """A pod netns enrolled in a Capture, with zt's three listeners."""

    topo: Topology
    capture: Capture
    listeners: ListenerSockets
    spec: PodCapture

    @property
    def mode(self) -> Mode:
        return self.capture.mode

    def close_listeners(self) -> None:
        for sock in (
            self.listeners.outbound,
            self.listeners.inbound_plain,
            self.listeners.inbound_hbone,
        ):
            sock.close()


@pytest.fixture(autouse=True)
def kernel_release() -> str:
    """Every capture test prints the kernel it ran on (shown with -s and on failure)."""
    release = platform.release()
    print(f"[capture test] kernel {release}")
    return release


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = build()
    try:
        yield t
    finally:
        t.remove()


def open_listeners(topo: Topology, mode: Mode) -> ListenerSockets:
    """15001 (IP_TRANSPARENT in sk_lookup mode: docs/design.md §6), 15006, 15008, each with a 5 s
    accept timeout so a missing connection fails the test instead of hanging it."""
    made: list[socket.socket] = []
    try:
        for port in (15001, 15006, 15008):
            sock = open_listener(topo.pod, port, transparent=mode == "sklookup" and port == 15001)
            sock.settimeout(5)
            made.append(sock)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return ListenerSockets(*made)


def enrolled_pod(
    topo: Topology, mode: Mode, *, dns: bool = True, original_source: bool = False
) -> Generator[Pod, None, None]:
    cap = Capture.open(mode, dns=dns)
    listeners: ListenerSockets | None = None
    try:
        listeners = open_listeners(topo, mode)
        spec = PodCapture(
            name=topo.pod,
            netns=topo.pod_path,
            ips=parse_ips([topo.pod_ip4, topo.pod_ip6]),
            listeners=listeners,
            original_source=original_source,
        )
        cap.enroll(spec)
        yield Pod(topo, cap, listeners, spec)
    finally:
        cap.close()
        if listeners is not None:
            for sock in (listeners.outbound, listeners.inbound_plain, listeners.inbound_hbone):
                sock.close()


@pytest.fixture(params=["connect", "sklookup"])
def pod(request: pytest.FixtureRequest, topo: Topology) -> Iterator[Pod]:
    """An enrolled pod, once per outbound mode."""
    yield from enrolled_pod(topo, request.param)


@pytest.fixture
def connect_pod(topo: Topology) -> Iterator[Pod]:
    yield from enrolled_pod(topo, "connect")


@pytest.fixture
def sklookup_pod(topo: Topology) -> Iterator[Pod]:
    yield from enrolled_pod(topo, "sklookup")
