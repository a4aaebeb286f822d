"""The node's promise: "adding a DENY while a connection is open closes it; removing it lets new
connections through" — through the daemon's config watcher (atomic rename, polled ~1 s)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.node.lab import Lab, handed_on
from zt.lab import logs, mesh
from zt.lab.apps import connect_only, exchange

pytestmark = pytest.mark.root

DENY_APP_PORT = {
    "name": "deny-app-port",
    "namespace": "lab",
    "scope": "Namespace",
    "action": "Deny",
    "rules": [[[{"destinationPorts": [mesh.APP_PORT]}]]],
}


@pytest.fixture(scope="module")
def lab(node_lab: Lab) -> Iterator[Lab]:
    with handed_on(node_lab) as lab:
        yield lab


def echo_once(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True once the peer closed or reset the connection; keeps it busy meanwhile."""
    sock.settimeout(0.3)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.sendall(b"ping")
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset / broken pipe: closed by the proxy
            return True
    return False


def until_echo(netns: str, host: str, seconds: float = 8.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if exchange(netns, host, mesh.APP_PORT, b"again", timeout=3).echoed:
            return True
        time.sleep(0.3)
    return False


def test_a_new_deny_closes_live_connections_and_removing_it_lets_new_ones_through(
    lab: Lab,
) -> None:
    a, b, plain = lab.pod("pod1-1"), lab.pod("pod2-1"), mesh.tcp_pod(lab.plan)
    hbone = connect_only(a.netns, str(b.ipv4), mesh.APP_PORT)
    clear = connect_only(plain.netns, str(b.ipv4), mesh.APP_PORT)  # inbound plaintext (:15006)
    original = lab.state.config.read_text()
    try:
        assert echo_once(hbone, b"before-hbone") == b"before-hbone"
        assert echo_once(clear, b"before-plain") == b"before-plain"
        offset = logs.size(lab.log("node2"))
        doc = yaml.safe_load(original)
        doc["policies"].append(DENY_APP_PORT)
        lab.write_config(yaml.safe_dump(doc, sort_keys=False))

        assert closed_within(hbone, 8), "the live HBONE connection survived the new DENY"
        assert closed_within(clear, 8), "the live plaintext connection survived the new DENY"
        rec = lab.wait_record("node2", offset, direction="inbound", protocol="hbone")
        assert rec.flags == "DENY" and "revoked" in rec.get("error"), rec.fields
        refused = exchange(a.netns, str(b.ipv4), mesh.APP_PORT, b"after", timeout=5)
        assert not refused.echoed and refused.received == b""
        denied = lab.wait_record(
            "node2", offset, direction="inbound", response_flags="DENY", policy="lab/deny-app-port"
        )
        assert denied.get("src.workload") == a.name
    finally:
        hbone.close()
        clear.close()
        lab.write_config(original)
    assert until_echo(a.netns, str(b.ipv4)), "removing the DENY did not let new connections in"
    assert until_echo(plain.netns, str(b.ipv4))
