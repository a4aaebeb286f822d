"""`zt hbone serve` and `zt hbone connect` as subprocesses on loopback.

The targets listen on 127.0.0.1, which `zt hbone serve` dials only when an --allow names loopback:
the `serve` fixture passes `--allow 127.0.0.0/8`; `serve_default` shows the default."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.interop import targets
from tests.proxy.helpers import Pki

ZT = Path(sys.executable).parent / "zt"


def _files(pki: Pki, directory: Path) -> dict[str, list[str]]:
    spem, skey, sca = pki.server.write(directory / "server")
    cpem, ckey, cca = pki.client.write(directory / "client")
    return {
        "server": ["--cert", str(spem), "--key", str(skey), "--ca", str(sca)],
        "client": ["--cert", str(cpem), "--key", str(ckey), "--ca", str(cca)],
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


def test_connect_bad_authority_is_a_usage_error(
    serve: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    via, files = serve
    done = _connect(via, files, "not-an-ip:80", b"", str(pki.server.identity))
    assert done.returncode == 2
    assert b"--authority" in done.stderr


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
    serve_default: tuple[str, dict[str, list[str]]], pki: Pki
) -> None:
    via, files = serve_default
    dialed: list[bytes] = []
    with targets.serve(lambda conn: dialed.append(conn.recv(1))) as port:
        done = _connect(via, files, f"127.0.0.1:{port}", b"x", str(pki.server.identity))
    assert done.returncode == 4, done.stderr
    assert b"401" in done.stderr and b"destination_not_allowed" in done.stderr
    assert dialed == []


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
