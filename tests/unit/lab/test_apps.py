"""The lab's pod apps on loopback: the echo server and the app-like client (no namespaces)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from zt.lab import apps


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def echo_port() -> Iterator[int]:
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(target=apps.serve_echo, args=([port], stop), daemon=True)
    thread.start()
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            stop.wait(0.02)
        yield port
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_returns_every_byte_then_closes_on_both_stacks(echo_port: int, host: str) -> None:
    payload = bytes(range(256)) * 2048  # 512 KiB: larger than any socket buffer here
    got = apps._talk(host, echo_port, payload, 10.0)
    assert got.echoed and got.received == payload and got.sent == len(payload)
    assert got.local.startswith("[::1]:" if ":" in host else "127.0.0.1:")


def test_a_refused_connection_is_a_verdict_not_a_crash() -> None:
    got = apps._talk("127.0.0.1", free_port(), b"x", 2.0)
    assert not got.echoed and got.received == b"" and "refused" in got.error.lower()


def test_send_subcommand_prints_the_echo_and_exits_zero(
    echo_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert apps.main(["send", "127.0.0.1", str(echo_port), "hello lab"]) == 0
    out = capsys.readouterr().out
    assert "\nhello lab\n[127.0.0.1:" in out and "sent 10 B, got 10 B back" in out
    assert "accept 127.0.0.1:" in out  # the server's line per accepted peer (IPv4, unmapped)
    assert apps.main(["send", "127.0.0.1", str(free_port())]) == 1
