"""Outbound capture in both modes (docs/design.md §6): connect4/6 + sockops + getpeername, and policy
routing + sk_lookup. An app in the pod connects to a remote address; zt's 15001 accepts it."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tests.netns.fixtures import Pod, open_listeners
from tests.netns.sockets import addresses, app_server, connect_from, norm, nothing_pending
from tests.netns.topo import Topology
from zt.capture import Capture, PodCapture, parse_ips
from zt.capture.errors import NoOriginalDestinationError
from zt.capture.netns import dial_marked, run_in_netns

pytestmark = pytest.mark.root


def _relay_once(pod: Pod, conn: socket.socket, orig_ip: str, orig_port: int) -> socket.socket:
    """What the proxy does: a marked upstream dial to the original destination, from the pod."""
    return dial_marked(pod.topo.pod, (orig_ip, orig_port), timeout=3)


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_captured_with_original_destination(pod: Pod, family: int) -> None:
    pod_ip, peer_ip = addresses(pod.topo, family)
    remote = app_server(pod.topo.peer, 8080)
    try:
        app = connect_from(pod.topo.pod, peer_ip, 8080)
        with app:
            # the app sees its original peer, not <pod ip>:15001
            shown = app.getpeername()
            assert (norm(shown[0]), shown[1]) == (ipaddress.ip_address(peer_ip), 8080)
            conn, peer = pod.listeners.outbound.accept()
            with conn:
                assert norm(peer[0]) == ipaddress.ip_address(pod_ip)
                assert peer[1] == app.getsockname()[1]
                orig = pod.capture.original_destination(conn)
                assert (orig.ip, orig.port) == (ipaddress.ip_address(peer_ip), 8080)
                # zt's marked upstream socket is not captured: it reaches the remote app
                with _relay_once(pod, conn, str(orig.ip), orig.port) as upstream:
                    accepted, src = remote.accept()
                    with accepted:
                        assert norm(src[0]) == ipaddress.ip_address(pod_ip)
                        upstream.sendall(b"up")
                        assert accepted.recv(2) == b"up"
                app.sendall(b"hello")
                assert conn.recv(5) == b"hello"
        assert nothing_pending(pod.listeners.outbound), "zt's own upstream was captured"
        counters = pod.capture.counters()
        if pod.mode == "connect":
            assert counters["connect_redirect"] == 1
            assert counters["sockops_keyed"] == 1
            assert counters["peername_rewrite"] >= 1
            assert counters["connect_skip_mark"] == 1
        else:
            assert counters["lookup_outbound"] == 1
            assert counters["connect_redirect"] == 0
    finally:
        remote.close()


def test_ipv4_mapped_destination_is_captured(pod: Pod) -> None:
    """connect6 also sees IPv4-mapped destinations (docs/design.md §6); the connection stays IPv4."""
    remote = app_server(pod.topo.peer, 8080)
    try:
        mapped = f"::ffff:{pod.topo.peer_ip4}"
        app = connect_from(pod.topo.pod, mapped, 8080)
        with app:
            assert norm(app.getpeername()[0]) == ipaddress.ip_address(pod.topo.peer_ip4)
            conn, peer = pod.listeners.outbound.accept()
            with conn:
                assert norm(peer[0]) == ipaddress.ip_address(pod.topo.pod_ip4)
                orig = pod.capture.original_destination(conn)
                assert (orig.ip, orig.port) == (ipaddress.ip_address(pod.topo.peer_ip4), 8080)
        assert nothing_pending(remote)
    finally:
        remote.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "pod4", "pod6"])
def test_in_pod_traffic_is_not_captured(pod: Pod, host: str) -> None:
    """Loopback and the pod's own IPs are left alone in both modes."""
    target = {"pod4": pod.topo.pod_ip4, "pod6": pod.topo.pod_ip6}.get(host, host)
    local = app_server(pod.topo.pod, 8080)
    try:
        with connect_from(pod.topo.pod, target, 8080) as app:
            conn, _ = local.accept()
            with conn:
                app.sendall(b"x")
                assert conn.recv(1) == b"x"
        assert nothing_pending(pod.listeners.outbound)
        assert pod.capture.counters()["connect_redirect"] == 0
    finally:
        local.close()


def test_original_destination_of_uncaptured_socket_fails(connect_pod: Pod) -> None:
    pod = connect_pod
    # a marked connection straight to 15001 was never captured: no entry to find
    with dial_marked(pod.topo.pod, (pod.topo.pod_ip4, 15001)) as _client:
        conn, _ = pod.listeners.outbound.accept()
        with conn, pytest.raises(NoOriginalDestinationError) as err:
            pod.capture.original_destination(conn)
        assert err.value.http_status == 404


def test_root_netns_connects_are_left_alone(connect_pod: Pod) -> None:
    """The cgroup programs are linked at the cgroup-v2 root: a connect in the root netns (not
    enrolled) must go where it was addressed."""
    pod = connect_pod
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(3)
    try:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=3) as client:
            conn, _ = server.accept()
            conn.close()
            assert client.getpeername() == ("127.0.0.1", port)
        # nor a connect in another, non-enrolled netns to a remote address
        other = app_server(pod.topo.peer, 9090)
        try:
            with connect_from(pod.topo.peer, pod.topo.peer_ip4, 9090):
                conn, _ = other.accept()
                conn.close()
        finally:
            other.close()
        assert pod.capture.counters()["connect_redirect"] == 0
    finally:
        server.close()


def test_outbound_fails_closed_without_listener(connect_pod: Pod) -> None:
    """connect mode with zt's 15001 gone: the rewritten connect is refused, never bypassed."""
    pod = connect_pod
    remote = app_server(pod.topo.peer, 8080)
    try:
        pod.listeners.outbound.close()
        with pytest.raises(ConnectionRefusedError):
            connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080).close()
        assert nothing_pending(remote)
    finally:
        remote.close()


def test_netns_helpers_restore_the_thread(connect_pod: Pod) -> None:
    """run_in_netns runs in the pod netns and leaves the caller's netns alone."""
    pod = connect_pod

    def own() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    before = own()
    inside = run_in_netns(pod.topo.pod, own)
    assert inside == os.stat(pod.topo.pod_path).st_ino
    assert own() == before


def test_pod_without_ipv4_is_not_rewritten_for_ipv4(topo: Topology) -> None:
    """connect4 has no IPv4 pod address to rewrite to: the connect is left alone and counted."""
    cap = Capture.open("connect")
    listeners = open_listeners(topo, "connect")
    try:
        cap.enroll(PodCapture("v6only", topo.pod_path, parse_ips([topo.pod_ip6]), listeners))
        remote = app_server(topo.peer, 8080)
        try:
            with connect_from(topo.pod, topo.peer_ip4, 8080):
                conn, _ = remote.accept()
                conn.close()
        finally:
            remote.close()
        assert cap.counters()["connect_skip_noip"] == 1
        assert nothing_pending(listeners.outbound)
    finally:
        cap.close()
        for sock in (listeners.outbound, listeners.inbound_plain, listeners.inbound_hbone):
            sock.close()
