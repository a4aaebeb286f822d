"""A listener keeps serving across certificate renewal: each handshake presents the current leaf."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from cryptography import x509

from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, rotating_server_context, verify_server_peer

ID = SpiffeId("cluster.local", "default", "echo")
CLIENT = SpiffeId("cluster.local", "default", "client")


def _handshake(port: int, client: WorkloadCert) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        ctx = client_context(client)
        with ctx.wrap_socket(raw, server_hostname=None) as tls:
            assert verify_server_peer(tls, [ID]) == ID
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(b"x")
            return der


def test_each_handshake_presents_the_current_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")
    now = time.time() - 50_000  # renewed below at half-life, still valid now
    current = {"cert": ca.issue(ID, now=now)}
    client = ca.issue(CLIENT, now=now)
    ctx = rotating_server_context(lambda: current["cert"])
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = server.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, args=(2,), daemon=True)
    thread.start()
    try:
        first = _handshake(port, client)
        current["cert"] = ca.issue(ID, now=now + 43_200)  # renewed at half-life
        second = _handshake(port, client)
    finally:
        thread.join(10)
        server.close()
    assert first != second
    renewed = x509.load_der_x509_certificate(second).not_valid_before_utc.timestamp()
    assert renewed == int(now + 43_200)
