"""Inbound capture by sk_lookup (docs/design.md §6): a client in another netns connects to the pod."""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.netns.fixtures import Pod
from tests.netns.sockets import addresses, app_server, connect_from, norm, nothing_pending
from zt.capture.netns import dial_marked

pytestmark = pytest.mark.root


@pytest.mark.parametrize("family", [4, 6])
def test_inbound_lands_on_the_right_listener(pod: Pod, family: int) -> None:
    pod_ip, peer_ip = addresses(pod.topo, family)
    app = app_server(pod.topo.pod, 8080)
    try:
        for port, listener in (
            (8080, pod.listeners.inbound_plain),  # app listening
            (9999, pod.listeners.inbound_plain),  # nothing listening
            (15008, pod.listeners.inbound_hbone),
        ):
            client = connect_from(pod.topo.peer, pod_ip, port)
            try:
                conn, peer = listener.accept()
                with conn:
                    orig = pod.capture.original_destination(conn)
                    assert orig.ip == ipaddress.ip_address(pod_ip)
                    assert orig.port == port
                    # the client's address is seen unchanged: no NAT anywhere
                    assert norm(peer[0]) == ipaddress.ip_address(peer_ip)
                    client.sendall(b"ping")
                    assert conn.recv(4) == b"ping"
            finally:
                client.close()
        assert nothing_pending(app), "an inbound connection bypassed zt and reached the app"
        counters = pod.capture.counters()
        assert counters["lookup_inbound"] == 2
        assert counters["lookup_hbone"] == 1
    finally:
        app.close()


@pytest.mark.parametrize("family", [4, 6])
def test_inbound_fails_closed_after_zt_closes_listeners(pod: Pod, family: int) -> None:
    """Fail closed: the sockmap entry vanishes with the listener and sk_lookup returns SK_DROP.
    The kernel treats that as "no socket" and answers the SYN with a RST: connection refused.
    In sk_lookup outbound mode that RST (unmarked TCP from the pod) is itself caught by the
    capture route of table 100 and looped to the pod's lo, so the client sees no answer at all
    (tests/packets proves where the RST goes). Either way the app never sees the connection."""
    pod_ip, _ = addresses(pod.topo, family)
    app = app_server(pod.topo.pod, 8080)
    expected: type[Exception] = ConnectionRefusedError if pod.mode == "connect" else TimeoutError
    try:
        pod.close_listeners()
        with ThreadPoolExecutor(2) as pool:  # both ports at once: a timeout is waited for once
            dials = [
                pool.submit(connect_from, pod.topo.peer, pod_ip, port, timeout=1.5)
                for port in (8080, 15008)
            ]
        for dial in dials:
            with pytest.raises(expected):
                dial.result().close()
        assert nothing_pending(app), "with zt gone a connection reached the app"
        assert pod.capture.counters()["lookup_no_listener"] >= 2
    finally:
        app.close()


def test_in_pod_traffic_to_own_ip_is_left_alone(pod: Pod) -> None:
    """Source == pod IP: delivery from zt (or the pod itself) reaches the app directly."""
    app = app_server(pod.topo.pod, 8080)
    try:
        for pod_ip in (pod.topo.pod_ip4, pod.topo.pod_ip6):
            client = connect_from(pod.topo.pod, pod_ip, 8080)
            with client:
                conn, _ = app.accept()
                conn.close()
        assert nothing_pending(pod.listeners.inbound_plain)
        assert pod.capture.counters()["lookup_self"] == 2
    finally:
        app.close()


def test_unenroll_stops_steering(pod: Pod) -> None:
    app = app_server(pod.topo.pod, 8080)
    try:
        pod.capture.unenroll(pod.spec.name)
        client = connect_from(pod.topo.peer, pod.topo.pod_ip4, 8080)
        with client:
            conn, _ = app.accept()
            conn.close()
        assert pod.capture.status().pods == ()
        assert all(link.program != "zt_sk_lookup" for link in pod.capture.status().links)
    finally:
        app.close()


def test_marked_delivery_socket_reaches_the_app(pod: Pod) -> None:
    """zt's delivery to the app: a marked socket made in the pod netns to pod ip:port."""
    app = app_server(pod.topo.pod, 8080)
    try:
        with dial_marked(pod.topo.pod, (pod.topo.pod_ip4, 8080)) as sock:
            conn, _ = app.accept()
            with conn:
                sock.sendall(b"x")
                assert conn.recv(1) == b"x"
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x539
    finally:
        app.close()
