"""The optional SOCKS5 listener (docs/design.md §1, 127.0.0.1:15080 in each pod): a tool without capture
reaches a pod on another node through HBONE, and a refused destination gets a SOCKS failure.

The same lab runs its nodes with `--no-dns` (a lab of its own costs seconds): a pod's port 53 is
then ordinary traffic (docs/dns.md "In the node")."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, identity, running_lab
from zt.capture.netns import run_in_netns
from zt.lab import mesh, runner

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("s5", node_args=("--socks5", "--no-dns")) as lab:
        yield lab


def _socks(netns: str, ip: str, port: int, payload: bytes) -> tuple[bytes, bytes]:
    """(the SOCKS5 reply, what came back after sending `payload` and half-closing). `ip` may be
    a name: it goes as a domain name (ATYP 3, RFC 1928 §4)."""
    try:
        address = b"\x01" + socket.inet_aton(ip)
    except OSError:
        address = b"\x03" + bytes([len(ip)]) + ip.encode()

    def talk() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", 15080), timeout=10) as sock:
            sock.sendall(b"\x05\x01\x00")
            assert sock.recv(2) == b"\x05\x00"
            sock.sendall(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
            answer = b""
            while len(answer) < 10:
                chunk = sock.recv(10 - len(answer))
                if not chunk:
                    break
                answer += chunk
            if answer[1:2] != b"\x00":
                return answer, b""
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            echoed = b""
            while chunk := sock.recv(65536):
                echoed += chunk
            return answer, echoed

    return run_in_netns(netns, talk, timeout=30)


def test_socks5_connect_goes_through_hbone(lab: Lab) -> None:
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    offset = lab.offsets()["node1"]
    answer, echoed = _socks(a.netns, str(b.ipv4), mesh.APP_PORT, b"socks payload")
    assert answer[:2] == b"\x05\x00" and echoed == b"socks payload"
    rec = lab.wait_record("node1", offset, direction="outbound", dst__hbone_addr=f"{b.ipv4}:8080")
    assert (rec.get("protocol"), rec.get("dst.identity")) == ("hbone", identity(b))


def test_socks5_denied_destination_gets_a_failure_reply(lab: Lab) -> None:
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    answer, _ = _socks(a.netns, str(b.ipv4), mesh.DENIED_PORT, b"x")
    assert answer[:2] == b"\x05\x04"  # host unreachable: the tunnel was refused (401)


def test_socks5_domain_name_of_a_service_reaches_an_endpoint(lab: Lab) -> None:
    """A service's short name from the pod's namespace resolves to its VIP (as the pod's DNS
    would answer), then routes to an endpoint; a name outside the mesh is 0x04."""
    a = lab.pod("pod1-1")
    offset = lab.offsets()["node1"]
    short = mesh.SERVICE_HOST.split(".", 1)[0]  # `echo`, from namespace lab
    answer, echoed = _socks(a.netns, short, mesh.SERVICE_PORT, b"socks by name")
    assert answer[:2] == b"\x05\x00" and echoed == b"socks by name"
    rec = lab.wait_record("node1", offset, direction="outbound", dst__service=mesh.SERVICE_HOST)
    assert rec.get("protocol") == "hbone"
    answer, _ = _socks(a.netns, "elsewhere.example", 80, b"x")
    assert answer[:2] == b"\x05\x04"


def test_no_dns_leaves_port_53_alone(lab: Lab) -> None:
    """A query from a pod to a server outside it (on the pod's gateway, in the node's namespace)
    reaches that server: nothing steers it to a proxy, and the node says DNS is off."""
    pod = lab.pod("pod1-1")
    gateway = str(lab.plan.node(pod.node).pod_net4.network_address + 1)

    def server() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.bind((gateway, 53))
        return sock

    def ask() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x12\x34 not steered", (gateway, 53))

    with run_in_netns(lab.plan.node(pod.node).netns, server) as srv:
        run_in_netns(pod.netns, ask)
        data, peer = srv.recvfrom(512)
    assert data == b"\x12\x34 not steered" and peer[0] == str(pod.ipv4)
    status, body = runner.http_get(lab.plan.node("node1").netns, runner.ADMIN_PORT, "/config_dump")
    assert status == 200 and json.loads(body)["dns"] == {"enabled": False}
