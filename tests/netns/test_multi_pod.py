"""Several pods in one capture: each pod's traffic goes to its own listeners."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.netns.fixtures import Pod, open_listeners
from tests.netns.sockets import connect_from
from tests.netns.topo import Topology, build
from zt.capture import ListenerSockets, PodCapture, parse_ips

pytestmark = pytest.mark.root


@pytest.fixture
def second_topo() -> Iterator[Topology]:
    t = build()
    try:
        yield t
    finally:
        t.remove()


def test_two_pods_each_to_its_own_listeners(pod: Pod, second_topo: Topology) -> None:
    other: ListenerSockets = open_listeners(second_topo, pod.mode)
    try:
        pod.capture.enroll(
            PodCapture(
                "second",
                second_topo.pod_path,
                parse_ips([second_topo.pod_ip4, second_topo.pod_ip6]),
                other,
            )
        )
        slots = {p.name: p.slot for p in pod.capture.status().pods}
        assert slots == {pod.spec.name: 0, "second": 1}
        for topo, listeners in ((pod.topo, pod.listeners), (second_topo, other)):
            with connect_from(topo.peer, topo.pod_ip4, 8080):
                conn, _ = listeners.inbound_plain.accept()
                with conn:
                    assert pod.capture.original_destination(conn).ip == ipaddress.ip_address(
                        topo.pod_ip4
                    )
            with connect_from(topo.pod, topo.peer_ip6, 8080):
                conn, _ = listeners.outbound.accept()
                with conn:
                    orig = pod.capture.original_destination(conn)
                    assert (orig.ip, orig.port) == (ipaddress.ip_address(topo.peer_ip6), 8080)
        pod.capture.unenroll("second")
        assert [p.name for p in pod.capture.status().pods] == [pod.spec.name]
    finally:
        for sock in (other.outbound, other.inbound_plain, other.inbound_hbone):
            sock.close()


def test_re_enroll_replaces_ips_and_listeners(connect_pod: Pod) -> None:
    """Re-registration (what a restarted daemon does) keeps the slot and link, swaps the rest."""
    pod = connect_pod
    before = pod.capture.status()
    pod.close_listeners()
    fresh = open_listeners(pod.topo, "connect")
    try:
        pod.capture.enroll(
            PodCapture(pod.spec.name, pod.topo.pod_path, parse_ips([pod.topo.pod_ip4]), fresh)
        )
        after = pod.capture.status()
        assert [(p.slot, p.ips, p.listeners) for p in after.pods] == [
            (0, (pod.topo.pod_ip4,), ("outbound", "inbound", "hbone"))
        ]
        assert {link.link_id for link in after.links} == {link.link_id for link in before.links}
        with connect_from(pod.topo.peer, pod.topo.pod_ip4, 8080):
            conn, _ = fresh.inbound_plain.accept()
            conn.close()
    finally:
        for sock in (fresh.outbound, fresh.inbound_plain, fresh.inbound_hbone):
            sock.close()
