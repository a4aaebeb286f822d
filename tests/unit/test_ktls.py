"""kTLS detection (zt/proxy/ktls.py): the pure decision on observed inputs, and the probes on this
machine's kernel."""

from __future__ import annotations

import errno
import socket

import pytest

from zt.errors import UsageError
from zt.proxy import ktls

OPENSSL_30 = 0x30000130


@pytest.mark.parametrize(
    ("inputs", "available", "enabled", "reason"),
    [
        (dict(ulp_errno=0, available_ulps="mptcp tls\n"), True, True, "enabled (TLS 1.3: transmit only"),
        (dict(ulp_errno=0, available_ulps="tls", wanted=False), True, False, "available, not enabled"),
        (dict(ulp_errno=errno.ENOENT, available_ulps="mptcp\n"), False, False, "CONFIG_TLS unset"),
        (dict(ulp_errno=errno.EPERM, available_ulps=""), False, False, "CAP_NET_ADMIN"),
        (dict(ulp_errno=errno.EEXIST, available_ulps=None), False, False, "EEXIST"),
        (dict(ulp_errno=None, available_ulps="tls"), True, True, "enabled"),
        (dict(ulp_errno=None, available_ulps=None), False, False, "tcp_available_ulp: unreadable"),
        (dict(ulp_errno=0, available_ulps="tls", openssl_version=0x101010FF), False, False,
         "3.0 or newer"),
    ],
)  # fmt: skip
def test_status_follows_kernel_openssl_and_wish(
    inputs: dict[str, object], available: bool, enabled: bool, reason: str
) -> None:
    args: dict[str, object] = {"wanted": True, "openssl_version": OPENSSL_30, **inputs}
    status = ktls.ktls_status(tx_connections=3, rx_connections=0, **args)  # type: ignore[arg-type]
    assert (status.available, status.enabled) == (available, enabled)
    assert reason in status.reason
    assert status.to_dict()["tx_connections"] == 3


def test_this_kernel_answers_cleanly() -> None:
    """Whatever the kernel: the probe gives an errno or 0, never raises; the status agrees with
    /proc's ULP list; a plain TCP socket has no offload."""
    found, ulps = ktls.probe()
    status = ktls.status()
    assert found is None or found >= 0
    if found == 0:
        assert status.available and ulps is not None and "tls" in ulps.split()
    else:
        assert not status.available and not status.enabled and status.reason
    assert not ktls.enabled()  # off unless the node asks for it
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        assert ktls.connection_ktls(client) == (False, False)
    names = {name for name, _help, _kind, _value in ktls.samples()}
    assert names == {
        "zt_ktls_available",
        "zt_ktls_enabled",
        "zt_ktls_tx_connections_total",
        "zt_ktls_rx_connections_total",
    }


@pytest.mark.parametrize(
    ("mode", "available", "wanted"),
    [("off", True, False), ("auto", True, False), ("on", True, True), ("off", False, False),
     ("auto", False, False)],
)  # fmt: skip
def test_setting_resolves_to_a_wish(mode: str, available: bool, wanted: bool) -> None:
    # auto stays off with OpenSSL 3.0: tests/ktls/test_keyupdate.py shows why on real kernels
    assert ktls.resolve(mode, openssl_version=OPENSSL_30, available=available, why="") is wanted


def test_on_without_ktls_and_unknown_settings_are_refused() -> None:
    with pytest.raises(ktls.KtlsUnavailable, match=r"--ktls on: .*no tls ULP"):
        ktls.resolve("on", openssl_version=OPENSSL_30, available=False, why="no tls ULP")
    with pytest.raises(UsageError, match=r"--ktls: got 'yes', expected one of auto, on, off"):
        ktls.resolve("yes", openssl_version=OPENSSL_30, available=True, why="")


def test_configure_reports_the_setting_and_restores() -> None:
    try:
        status = ktls.configure("auto")
        assert (status.mode, status.enabled, ktls.enabled()) == ("auto", False, False)
        if status.available:
            assert status.reason == ktls.AUTO_OFF
        assert ktls.status().to_dict()["mode"] == "auto"
    finally:
        ktls.configure("off")
