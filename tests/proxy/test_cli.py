"""`zt hbone serve` and `zt hbone connect` as subprocesses on loopback.

The targets listen on 127.0.0.1, which `zt hbone serve` dials only when an --allow names loopback:
the `serve` fixture passes `--allow 127.0.0.0/8`; `serve_default` shows the default."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop import targets
from tests.proxy.helpers import LOOPBACK, TD, Pki, run, zt_dial
from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import TlsError
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy import accept as proxy_accept
from zt.proxy import server as proxy_server
from zt.proxy.accept import DEFAULT_LIMITS
from zt.proxy.client import dial, open_tunnel
from zt.proxy.errors import ConnectionLost, TunnelRefused
from zt.proxy.guard import StandaloneAdmission
from zt.proxy.inbound import InboundFlow
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check, server_peer_check
from zt.state.loopguard import AllowList
from zt.telemetry.ratelog import LogBudget

ZT = Path(sys.executable).parent / "zt"


def _files(pki: Pki, directory: Path) -> dict[str, list[str]]:
    spem, skey, sca = pki.server.write(directory / "server")
    cpem, ckey, cca = pki.client.write(directory / "client")
    return {
        "server": ["--cert", str(spem), "--key", str(skey), "--bundle", str(sca)],
        "client": ["--cert", str(cpem), "--key", str(ckey), "--bundle", str(cca)],
    }


@contextmanager
def _serving(pki: Pki, tmp_path: Path, *flags: str) -> Iterator[tuple[str, dict[str, list[str]]]]:
    files = _files(pki, tmp_path)
    err = tmp_path / "serve.stderr"
    with open(err, "wb") as sink:
        proc = subprocess.Popen(
            [str(ZT), "hbone", "serve", "--listen", "127.0.0.1:0", *files["server"], *flags],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        address = ""
        deadline = time.monotonic() + 60  # generous: CI machines may be loaded
        while not address and time.monotonic() < deadline:
            assert proc.poll() is None, err.read_text()
            found = re.search(r"listening on (\S+)", err.read_text())
            address = found.group(1) if found else ""
            time.sleep(0.05)
        assert address, f"zt hbone serve did not report its address: {err.read_text()}"
        yield address, files
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def serve(pki: Pki, tmp_path: Path) -> Iterator[tuple[str, dict[str, list[str]]]]:
    with _serving(pki, tmp_path, "--allow", "127.0.0.0/8") as served:
        yield served


@pytest.fixture
def serve_default(pki: Pki, tmp_path: Path) -> Iterator[tuple[str, dict[str, list[str]]]]:
    with _serving(pki, tmp_path) as served:
        yield served


def _connect(
    via: str, files: dict[str, list[str]], authority: str, stdin: bytes, san: str
) -> subprocess.CompletedProcess[bytes]:
    cmd = [str(ZT), "hbone", "connect", "--via", via, "--authority", authority]
    cmd += [*files["client"], "--expect-san", san]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)


def test_connect_carries_stdin_and_stdout(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    via, files = serve
    payload = os.urandom(1 << 20)
    with targets.serve(targets.echo) as port:
        done = _connect(via, files, f"127.0.0.1:{port}", payload, str(pki.server.identity))
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload
    assert b"200" in done.stderr


def test_connect_exit_status_reflects_503(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    via, files = serve
    done = _connect(via, files, f"127.0.0.1:{targets.free_port()}", b"", str(pki.server.identity))
    assert done.returncode == 5, done.stderr
    assert b"503" in done.stderr
    assert done.stdout == b""


def test_connect_refuses_unexpected_server_identity(
    serve: tuple[str, dict[str, list[str]]],
) -> None:
    via, files = serve
    done = _connect(via, files, "127.0.0.1:9", b"", "spiffe://cluster.local/ns/default/sa/other")
    assert done.returncode == 1, done.stderr
    assert b"expected one of" in done.stderr


def test_connect_bad_authority_is_a_usage_error_and_a_hostname_goes_to_the_server(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    via, files = serve
    done = _connect(via, files, "not_a_host:80", b"", str(pki.server.identity))
    assert done.returncode == 2
    assert b"--authority" in done.stderr
    # a name is sent as is (lowercased); `hbone serve` has no mesh to resolve it: 503
    done = _connect(via, files, "Echo.default.svc:80", b"", str(pki.server.identity))
    assert done.returncode == 5, done.stderr
    assert b"CONNECT echo.default.svc:80" in done.stderr and b"503 unknown_hostname" in done.stderr


def test_serve_answers_400_to_a_connect_aimed_at_itself(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    """Allowed or not, its own listener is a loop (nested CONNECTs would each cost a TLS
    connection and two sockets)."""
    via, files = serve
    done = _connect(via, files, via, b"", str(pki.server.identity))
    assert done.returncode == 3, done.stderr
    assert b"400" in done.stderr and b"loop_guard" in done.stderr


def test_serve_answers_400_to_a_zt_port_on_loopback_even_when_allowed(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    """127.0.0.1:15000 is a node's admin (tests/proxy/test_guard.py covers every zt port)."""
    via, files = serve
    done = _connect(via, files, "127.0.0.1:15000", b"", str(pki.server.identity))
    assert done.returncode == 3, done.stderr
    assert b"400" in done.stderr


def test_serve_refuses_loopback_without_an_allow_and_never_dials(
    serve_default: tuple[str, dict[str, list[str]]], pki: Pki, tmp_path: Path
) -> None:
    via, files = serve_default
    dialed: list[bytes] = []
    with targets.serve(lambda conn: dialed.append(conn.recv(1))) as port:
        done = _connect(via, files, f"127.0.0.1:{port}", b"x", str(pki.server.identity))
    assert done.returncode == 4, done.stderr
    assert b"401" in done.stderr and b"destination_not_allowed" in done.stderr
    assert dialed == []
    logged = (tmp_path / "serve.stderr").read_text()  # the refusal, as the operator sees it
    assert re.search(
        rf"zt: CONNECT 127\.0\.0\.1:{port} from 127\.0\.0\.1:\d+ \(spiffe://\S+\) "
        r"refused: 401 destination_not_allowed",
        logged,
    ), logged


def test_serve_with_an_allow_for_the_port_reaches_loopback(pki: Pki, tmp_path: Path) -> None:
    with (
        targets.serve(targets.echo) as port,
        _serving(pki, tmp_path, "--allow", f"127.0.0.0/8:{port}") as (via, files),
    ):
        done = _connect(via, files, f"127.0.0.1:{port}", b"ping", str(pki.server.identity))
        other = _connect(via, files, f"127.0.0.1:{port + 1}", b"", str(pki.server.identity))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ping" and b"200" in done.stderr
    assert other.returncode == 4, other.stderr  # same host, a port no --allow names


def test_serve_bad_allow_is_a_usage_error(pki: Pki, tmp_path: Path) -> None:
    files = _files(pki, tmp_path)
    done = subprocess.run(
        [str(ZT), "hbone", "serve", "--listen", "127.0.0.1:0", *files["server"],
         "--allow", "10.0.0.0/8:90-80"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"--allow: got '10.0.0.0/8:90-80'" in done.stderr
    assert b"expected CIDR[:PORTS]" in done.stderr


def test_serve_logs_each_refused_client_with_address_and_reason(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, the server `zt hbone serve` builds: every way a client is refused leaves one
    zt.proxy line with the client's address and the reason."""
    caplog.set_level(logging.INFO, logger="zt.proxy")
    for limited in (proxy_server.refusal_log, proxy_accept.ratelog):  # no line held back from
        monkeypatch.setattr(limited, "budget", LogBudget())  # earlier tests of this process
    foreign_ca = CertificateAuthority.init(tmp_path / "foreign", "other.td")
    roots = pki.ca.roots_pem + foreign_ca.roots_pem
    leaf = foreign_ca.issue(SpiffeId("other.td", "default", "client"), now=time.time())
    foreigner = WorkloadCert.from_pem(leaf.cert_pem, leaf.key_pem, roots)
    server_cert = WorkloadCert.from_pem(pki.server.cert_pem, pki.server.key_pem, roots)

    async def refused_tunnels(addr: SocketAddr) -> None:
        driver = await zt_dial(pki, addr)
        for authority in (addr, SocketAddr.parse("127.0.0.1:9")):  # itself; outside --allow
            with pytest.raises(TunnelRefused):
                await open_tunnel(driver, ConnectRequest(SocketAddr(authority.ip, authority.port)))
        driver.close()

    async def body() -> None:
        admission = StandaloneAdmission(AllowList.parse(["10.0.0.0/8"], flag="--allow"))
        limits = dataclasses.replace(DEFAULT_LIMITS, handshake_timeout=0.3)
        server = HboneServer(
            server_context(server_cert),
            peer_check=client_peer_check(TD),
            flow=InboundFlow(admission),
        )
        addr = await server.start(LOOPBACK, limits=limits)
        admission.bind(addr)
        try:
            await refused_tunnels(addr)
            check = server_peer_check([pki.server.identity])
            with pytest.raises((ConnectionLost, TlsError)):  # peer identity: foreign domain
                await dial(addr, client_context(foreigner), peer_check=check)
            bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no client certificate: TLS fails
            bare.load_verify_locations(cadata=pki.ca.roots_pem.decode())
            bare.check_hostname = False
            bare.set_alpn_protocols(["h2"])
            with pytest.raises(TlsError):
                await dial(addr, bare, peer_check=check)
            _, silent = await asyncio.open_connection(str(addr.ip), addr.port)  # says nothing
            await asyncio.sleep(0.6)
            silent.close()
        finally:
            await server.shutdown(0.5)

    run(body())
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("zt.proxy")]
    expected = [
        r"CONNECT 127\.0\.0\.1:\d+ from 127\.0\.0\.1:\d+ \(spiffe://\S+\) refused: 400 loop_guard",
        r"CONNECT 127\.0\.0\.1:9 from 127\.0\.0\.1:\d+ \(\S+\) refused: 401 destination_not_allowed",
        r"HBONE connection from 127\.0\.0\.1:\d+ refused \(foreign_trust_domain\): .*other\.td",
        r"connection from 127\.0\.0\.1 failed: .*(SSL|CERTIFICATE|certificate)",
        r"connection from 127\.0\.0\.1 not authenticated within 0\.3 s",
    ]
    for pattern in expected:
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)
