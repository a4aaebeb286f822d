"""Kernel TLS (kTLS): whether this machine can have it, and whether OpenSSL turned it on.

With `SSL_OP_ENABLE_KTLS` OpenSSL 3 hands a connection's record encryption to the kernel (the
`tls` TCP upper-layer protocol, `CONFIG_TLS`) once the handshake is done, when it owns the socket:
only on the socket path (zt/proxy/tlssocket.py), never through a MemoryBIO. What OpenSSL 3.0 (Debian
12) does for TLS 1.3, from its ssl/tls13_enc.c `tls13_change_cipher_state`:

- TX only: "if (!(which & SSL3_CC_WRITE) || !(which & SSL3_CC_APPLICATION) || (s->options &
  SSL_OP_ENABLE_KTLS) == 0) goto skip_ktls;" -- the receive side of TLS 1.3 stays in user space
  (3.0 offloads RX for TLS 1.2 only), and only application traffic keys are offloaded;
- ciphers (ssl/ktls.c `ktls_check_supported_cipher`, Linux): AES-128-GCM, AES-256-GCM (and CCM,
  CHACHA20-POLY1305 with kernels that have them) -- both of zt's suites (zt/identity/_suites.py);
- not with record padding or a max_send_fragment other than 16 KiB (zt sets neither).

Everything here fails soft: a kernel without the `tls` ULP (`CONFIG_TLS` unset, as on the
machine this was written on) gives "unavailable" with the reason, and TLS runs in user space.
`ktls_status` is the pure decision; `probe()` and `connection_ktls()` are the syscalls.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

# openssl/ssl.h (3.0): "#define SSL_OP_ENABLE_KTLS SSL_OP_BIT(3)"; Python's ssl has no name for it.
SSL_OP_ENABLE_KTLS = 1 << 3
OPENSSL_3 = 0x30000000
SOL_TLS = 282  # linux/socket.h
TLS_TX, TLS_RX = 1, 2  # linux/tls.h
TCP_ULP = 31  # linux/tcp.h
ULP_LIST = Path("/proc/sys/net/ipv4/tcp_available_ulp")


@dataclass(frozen=True)
class KtlsStatus:
    """`available`: kernel and OpenSSL can offload; `enabled`: and zt asks OpenSSL to;
    `tx_connections` / `rx_connections`: connections OpenSSL offloaded, per direction."""

    available: bool
    enabled: bool
    reason: str
    tx_connections: int = 0
    rx_connections: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def ktls_status(
    *,
    wanted: bool,
    openssl_version: int,
    ulp_errno: int | None,
    available_ulps: str | None,
    tx_connections: int = 0,
    rx_connections: int = 0,
) -> KtlsStatus:
    """Decide from what was observed: `openssl_version` (ssl.OPENSSL_VERSION_NUMBER),
    `ulp_errno` (setsockopt TCP_ULP "tls" on a connected loopback socket: 0 worked, else its
    errno; None when it could not be tried) and `available_ulps` (the text of
    /proc/sys/net/ipv4/tcp_available_ulp read after that attempt, None when unreadable)."""
    counts = {"tx_connections": tx_connections, "rx_connections": rx_connections}
    if openssl_version < OPENSSL_3:
        reason = f"OpenSSL {openssl_version:#x} has no SSL_OP_ENABLE_KTLS (3.0 or newer needed)"
        return KtlsStatus(False, False, reason, **counts)
    ulps = (available_ulps or "").split()
    if ulp_errno == 0 or (ulp_errno is None and "tls" in ulps):
        if not wanted:
            return KtlsStatus(True, False, "available, not enabled", **counts)
        return KtlsStatus(True, True, "enabled (TLS 1.3: transmit only, OpenSSL 3.0)", **counts)
    if ulp_errno is None:
        where = f"tcp_available_ulp: {' '.join(ulps) or 'unreadable'}"
        return KtlsStatus(False, False, f"no tls ULP in the kernel ({where})", **counts)
    if ulp_errno == errno.ENOENT:
        reason = "the kernel has no tls ULP (CONFIG_TLS unset and no tls module)"
    elif ulp_errno == errno.EPERM:
        reason = "loading the tls module needs CAP_NET_ADMIN (or modprobe tls beforehand)"
    else:
        reason = f"setsockopt TCP_ULP tls failed: {errno.errorcode.get(ulp_errno, ulp_errno)}"
    return KtlsStatus(False, False, reason, **counts)


# -- the syscalls ------------------------------------------------------------------------------
def try_ulp() -> int | None:
    """Attach the `tls` ULP to a throwaway connected loopback socket: 0 when the kernel has it,
    else the errno. The kernel loads the module on demand (`tcp-ulp-tls`), as `modprobe tls`
    would, when the caller may. None when no loopback pair could be made."""
    try:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None
    with listener, contextlib.ExitStack() as stack:
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = stack.enter_context(socket.create_connection(listener.getsockname(), 1.0))
            stack.enter_context(listener.accept()[0])
        except OSError:
            return None
        try:
            client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
        except OSError as exc:
            return exc.errno or errno.EINVAL
        return 0


def read_ulps() -> str | None:
    try:
        return ULP_LIST.read_text()
    except OSError:
        return None


@cache
def probe() -> tuple[int | None, str | None]:
    """(ulp_errno, available_ulps) of this machine, probed once per process."""
    found = try_ulp()
    return found, read_ulps()


def connection_ktls(sock: socket.socket) -> tuple[bool, bool]:
    """(TX, RX) offloaded on this connection: its ULP is `tls` and the kernel holds a crypto state
    for the direction. A 4-byte getsockopt(SOL_TLS) returns only version and cipher (the kernel's
    `do_tls_getsockopt_conf` copies the key only into a full-size buffer); EBUSY: not set."""
    try:
        ulp = socket.socket.getsockopt(sock, socket.IPPROTO_TCP, TCP_ULP, 16)
    except OSError:
        return False, False
    if ulp.rstrip(b"\0") != b"tls":
        return False, False
    return _direction(sock, TLS_TX), _direction(sock, TLS_RX)


def _direction(sock: socket.socket, which: int) -> bool:
    try:
        return any(socket.socket.getsockopt(sock, SOL_TLS, which, 4))
    except OSError:
        return False


# -- this process --------------------------------------------------------------------------------
class _Counts:
    # Off unless asked for: OpenSSL 3.0 does not re-key the kernel's TX state on a TLS 1.3
    # KeyUpdate (tls13_update_key has no kTLS branch), which could not be tried here.
    wanted = False
    tx = 0
    rx = 0


def want(enabled: bool) -> KtlsStatus:
    """Ask for kTLS on new socket-path connections when the machine has it; returns the status
    (the node calls this once at start with its setting)."""
    _Counts.wanted = enabled
    return status()


def status() -> KtlsStatus:
    ulp_errno, ulps = probe()
    return ktls_status(
        wanted=_Counts.wanted,
        openssl_version=ssl.OPENSSL_VERSION_NUMBER,
        ulp_errno=ulp_errno,
        available_ulps=ulps,
        tx_connections=_Counts.tx,
        rx_connections=_Counts.rx,
    )


def enabled() -> bool:
    """Whether a new connection should set SSL_OP_ENABLE_KTLS (cheap: the probe is cached)."""
    return _Counts.wanted and status().enabled


def count(sock: socket.socket) -> None:
    """After a handshake with SSL_OP_ENABLE_KTLS: count what OpenSSL offloaded."""
    tx, rx = connection_ktls(sock)
    _Counts.tx += tx
    _Counts.rx += rx


def samples() -> list[tuple[str, str, str, float]]:
    """Metrics (a Registry collector, zt/telemetry/metrics.py)."""
    now = status()
    return [
        ("zt_ktls_available", "1 when the kernel and OpenSSL can offload TLS records (kTLS)",
         "gauge", float(now.available)),
        ("zt_ktls_tx_connections_total", "TLS connections whose transmit side OpenSSL handed "
         "to the kernel", "counter", float(now.tx_connections)),
        ("zt_ktls_rx_connections_total", "TLS connections whose receive side OpenSSL handed to "
         "the kernel", "counter", float(now.rx_connections)),
    ]  # fmt: skip
