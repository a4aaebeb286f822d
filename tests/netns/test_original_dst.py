"""SO_ORIGINAL_DST answered by bpf/getsockopt.c on the proxy's accepted 15001 socket, as netfilter
answers it after an iptables REDIRECT; the app's original destination kept in its socket storage;
the map's read-once fallback (one BPF_MAP_LOOKUP_AND_DELETE_ELEM)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import subprocess

import pytest

from tests.netns.fixtures import Pod
from tests.netns.sockets import app_server, connect_from, norm
from zt.capture import ListenerSockets, PodCapture, bpfsys, loader, maps
from zt.capture.netns import dial_marked, open_listener, run_in_netns
from zt.capture.tables import Tables

pytestmark = pytest.mark.root

SOL_IPV6 = socket.IPPROTO_IPV6


def _sockaddr_in(raw: bytes) -> tuple[int, str, int]:
    """(family, ip, port) of a struct sockaddr_in."""
    family = struct.unpack_from("=H", raw)[0]
    port, packed = struct.unpack("!2xH4s8x", raw)
    return family, str(ipaddress.IPv4Address(packed)), port


def _sockaddr_in6(raw: bytes) -> tuple[int, str, int]:
    family = struct.unpack_from("=H", raw)[0]
    port, packed = struct.unpack("!2xH4x16s4x", raw)
    return family, str(ipaddress.IPv6Address(packed)), port


def _errno_of(call: object) -> int:
    assert callable(call)
    with pytest.raises(OSError) as err:
        call()
    assert err.value.errno is not None
    return err.value.errno


def test_ipv4_original_destination_answered_like_netfilter(connect_pod: Pod) -> None:
    pod = connect_pod
    with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            first = conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16)
            assert len(first) == 16
            assert _sockaddr_in(first) == (socket.AF_INET, pod.topo.peer_ip4, 8080)
            # asked again (netfilter answers as long as the connection lives): the same answer,
            # now from the socket's storage; the map entry was moved, not copied
            assert conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16) == first
            assert pod.capture.counters()["sockopt_orig"] == 1
            app_ip, app_port = conn.getpeername()[:2]
            tables = Tables(dict(loader.load().map_fds))
            assert tables.pop_orig(norm(app_ip), app_port) is None
            # an IPv4 original is not answered at the IPv6 level (ip6tables would not either)
            assert _errno_of(lambda: conn.getsockopt(SOL_IPV6, maps.SO_ORIGINAL_DST, 28))
            orig = pod.capture.original_destination(conn)
            assert (str(orig.ip), orig.port) == (pod.topo.peer_ip4, 8080)


def test_ipv6_original_destination_answered_at_sol_ipv6(connect_pod: Pod) -> None:
    pod = connect_pod
    with connect_from(pod.topo.pod, pod.topo.peer_ip6, 9090):
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            assert _errno_of(lambda: conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16))
            raw = conn.getsockopt(SOL_IPV6, maps.SO_ORIGINAL_DST, 28)
            family, ip, port = _sockaddr_in6(raw)
            assert (family, ipaddress.ip_address(ip), port) == (
                socket.AF_INET6,
                ipaddress.ip_address(pod.topo.peer_ip6),
                9090,
            )
            orig = pod.capture.original_destination(conn)
            assert (orig.ip, orig.port) == (ipaddress.ip_address(pod.topo.peer_ip6), 9090)


def test_short_buffer_gets_an_error_and_loses_nothing(connect_pod: Pod) -> None:
    pod = connect_pod
    with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            assert _errno_of(lambda: conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 8))
            raw = conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16)
            assert _sockaddr_in(raw) == (socket.AF_INET, pod.topo.peer_ip4, 8080)


def test_uncaptured_sockets_get_the_kernels_error(connect_pod: Pod) -> None:
    pod = connect_pod
    # zt's own marked connection straight to 15001: never captured, nothing to answer
    with dial_marked(pod.topo.pod, (pod.topo.pod_ip4, 15001)) as client:
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            code = _errno_of(lambda: conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16))
            assert code in (errno.ENOENT, errno.ENOPROTOOPT)
        # the other end of a connection is no proxy socket either
        assert _errno_of(lambda: client.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16))
    # other options pass through untouched
    with socket.socket() as plain:
        assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert pod.capture.counters()["sockopt_orig"] == 0


def test_map_entry_is_read_once(connect_pod: Pod) -> None:
    """The fallback path: one LOOKUP_AND_DELETE hands the entry out exactly once."""
    pod = connect_pod
    tables = Tables(dict(loader.load().map_fds))
    with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
        conn, _ = pod.listeners.outbound.accept()
        with conn:
            app_ip, app_port = conn.getpeername()[:2]
            got = tables.pop_orig(norm(app_ip), app_port)
            assert got is not None
            assert (str(got.ip), got.port) == (pod.topo.peer_ip4, 8080)
            assert tables.pop_orig(norm(app_ip), app_port) is None
            # taken: the kernel has nothing left to answer with
            assert _errno_of(lambda: conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16))


def _refused_app(pod: Pod) -> socket.socket:
    """An app socket whose captured connect() to the peer was refused (15001 closed)."""

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # blocking, so the refusal leaves the socket unconnected and ready for another
            # connect() (after a non-blocking attempt the next connect() says ECONNABORTED
            # first); a refusal inside the pod is immediate
            with pytest.raises(ConnectionRefusedError):
                sock.connect((pod.topo.peer_ip4, 8080))
            sock.settimeout(3)
        except BaseException:
            sock.close()
            raise
        return sock

    pod.listeners.outbound.close()  # fail closed: the rewritten connect is refused
    return run_in_netns(pod.topo.pod, dial, timeout=10)


def test_reconnect_after_refusal_forgets_the_first_destination(connect_pod: Pod) -> None:
    """A socket may connect() again after a refused attempt: what the first (captured) attempt
    stored must not show through the second, uncaptured one."""
    pod = connect_pod
    local = app_server(pod.topo.pod, 7070)  # dual-stack: serves 127.0.0.1 too
    try:
        with _refused_app(pod) as app:
            run_in_netns(pod.topo.pod, lambda: app.connect(("127.0.0.1", 7070)))
            assert app.getpeername() == ("127.0.0.1", 7070)
            conn, _ = local.accept()
            conn.close()
    finally:
        local.close()


def test_reconnect_after_refusal_captures_the_second_destination(connect_pod: Pod) -> None:
    pod = connect_pod
    with _refused_app(pod) as app:
        outbound = open_listener(pod.topo.pod, 15001)
        try:
            outbound.settimeout(5)
            listeners = ListenerSockets(
                outbound, pod.listeners.inbound_plain, pod.listeners.inbound_hbone
            )
            pod.capture.enroll(PodCapture(pod.spec.name, pod.spec.netns, pod.spec.ips, listeners))
            run_in_netns(pod.topo.pod, lambda: app.connect((pod.topo.peer_ip4, 9090)))
            assert app.getpeername() == (pod.topo.peer_ip4, 9090)
            conn, _ = outbound.accept()
            with conn:
                orig = pod.capture.original_destination(conn)
                assert (str(orig.ip), orig.port) == (pod.topo.peer_ip4, 9090)
        finally:
            outbound.close()


def test_inbound_socket_is_not_answered_even_if_its_peer_matches_an_entry(
    connect_pod: Pod,
) -> None:
    """Only sockets accepted on 15001 are looked up: an inbound connection whose peer (ip, port)
    happens to be a key of zt_orig_addr (a zt upstream dial may share an app's source port) is
    answered by getsockname(), not by the app's entry."""
    pod = connect_pod
    src = (pod.topo.peer_ip4, 40123)
    fd = loader.load().map_fds["zt_orig_addr"]
    planted = maps.addr_key(ipaddress.IPv4Address("192.0.2.7"), 443, socket.AF_INET)
    bpfsys.map_update(fd, maps.addr_key(ipaddress.IPv4Address(src[0]), src[1]), planted)

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.settimeout(3)
            sock.bind(src)
            sock.connect((pod.topo.pod_ip4, 9999))
        except BaseException:
            sock.close()
            raise
        return sock

    with run_in_netns(pod.topo.peer, dial, timeout=10):
        conn, peer = pod.listeners.inbound_plain.accept()
        with conn:
            assert (str(norm(peer[0])), peer[1]) == src
            assert _errno_of(lambda: conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16))
            orig = pod.capture.original_destination(conn)
            assert (str(orig.ip), orig.port) == (pod.topo.pod_ip4, 9999)
    assert pod.capture.counters()["sockopt_orig"] == 0


def test_run_time_statistics_count_the_programs_of_a_connection(connect_pod: Pod) -> None:
    """bpfsys.enable_stats / prog_run_stats, which bench/capture_bench.py --kernel-stats reads:
    while the stats fd is open a captured connection adds runs and run time to connect4 and
    getsockopt. (The programs are linked at the cgroup root, so other processes may add runs,
    and may hold stats on themselves: only lower bounds are asserted.)"""
    pod = connect_pod
    progs = loader.load().prog_fds
    watched = ("zt_connect4", "zt_sockops", "zt_getsockopt")

    stats_fd = bpfsys.enable_stats()
    try:
        before = {name: bpfsys.prog_run_stats(progs[name]) for name in watched}
        with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
            conn, _ = pod.listeners.outbound.accept()
            with conn:
                pod.capture.original_destination(conn)
        after = {name: bpfsys.prog_run_stats(progs[name]) for name in watched}
    finally:
        os.close(stats_fd)
    for name in watched:
        (ns0, runs0), (ns1, runs1) = before[name], after[name]
        assert runs1 >= runs0 + 1 and ns1 > ns0, (name, before[name], after[name])
    # sockops: TCP_CONNECT_CB plus the callbacks the kernel makes for every connection
    assert after["zt_sockops"][1] - before["zt_sockops"][1] >= 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\x02\x00\x1f\x90\x0a\x00\x00\x01" + bytes(8), ("10.0.0.1", 8080)),
        (b"\x0a\x00\x01\xbb" + bytes(4) + ipaddress.IPv6Address("fd00::1").packed + bytes(4),
         ("fd00::1", 443)),
    ],
)  # fmt: skip
def test_sockaddr_decoders(raw: bytes, expected: tuple[str, int]) -> None:
    decode = (
        maps.decode_sockaddr_in if len(raw) == maps.SOCKADDR_IN_SIZE else maps.decode_sockaddr_in6
    )
    got = decode(raw)
    assert (str(got.ip), got.port) == expected


def test_zt_answer_wins_over_conntrack_in_the_pod(connect_pod: Pod) -> None:
    """With conntrack active in the pod (any `ct` rule), netfilter answers SO_ORIGINAL_DST itself,
    but it only knows the connection as app -> pod:15001 (connect4 rewrote it before the SYN):
    zt's entry must win, or every captured connection would loop to the pod's own 15001."""
    pod = connect_pod
    nft = ["nsenter", f"--net=/run/netns/{pod.topo.pod}", "nft"]
    table = ["inet", "zt_test_ct"]
    subprocess.run([*nft, "add", "table", *table], check=True, timeout=10)
    try:
        subprocess.run(
            [*nft, "add", "chain", *table, "out", "{ type filter hook output priority 0 ; }"],
            check=True, timeout=10,
        )  # fmt: skip
        subprocess.run([*nft, "add", "rule", *table, "out", "ct", "state", "new", "counter"],
                       check=True, timeout=10)  # fmt: skip
        with connect_from(pod.topo.pod, pod.topo.peer_ip4, 8080):
            conn, _ = pod.listeners.outbound.accept()
            with conn:
                raw = conn.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, 16)
                assert _sockaddr_in(raw) == (socket.AF_INET, pod.topo.peer_ip4, 8080)
                orig = pod.capture.original_destination(conn)
                assert (str(orig.ip), orig.port) == (pod.topo.peer_ip4, 8080)
        listed = subprocess.run([*nft, "list", "table", *table], capture_output=True, text=True,
                                check=True, timeout=10)  # fmt: skip
        assert "packets 0 " not in listed.stdout  # conntrack did see the connection
    finally:
        subprocess.run([*nft, "delete", "table", *table], check=False, timeout=10)
