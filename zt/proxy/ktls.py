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
`ktls_status` and `resolve` are the pure decisions; `probe()` and `connection_ktls()` the syscalls.

The setting (`zt run --ktls`, `zt hbone serve|connect --ktls`): `off`; `on` (refused at start on a
machine without kTLS: asked for, it must be there); `auto`, which is off with OpenSSL 3.0. Why:
RFC 8446 §4.6.3 "If the request_update field is set to "update_requested", then the receiver MUST
send a KeyUpdate of its own [...] prior to sending its next Application Data record." OpenSSL 3.0
sends that KeyUpdate through the kernel and re-keys only its own user-space state
(tls13_update_key has no kTLS branch), and Linux before 6.14 cannot re-key a
TLS_TX state at all: every record after it is sealed with the old key and the peer fails the
connection (bad_record_mac). tests/ktls/test_keyupdate.py shows this on Debian's 6.1 and 6.12. A
peer that never requests a key update (zt never calls SSL_key_update) is safe: `on` is for meshes
that know their peers.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from zt.errors import UsageError

# openssl/ssl.h (3.0): "#define SSL_OP_ENABLE_KTLS SSL_OP_BIT(3)"; Python's ssl has no name for it.
SSL_OP_ENABLE_KTLS = 1 << 3
OPENSSL_3 = 0x30000000
SOL_TLS = 282  # linux/socket.h
TLS_TX, TLS_RX = 1, 2  # linux/tls.h
TCP_ULP = 31  # linux/tcp.h
ULP_LIST = Path("/proc/sys/net/ipv4/tcp_available_ulp")

Mode = Literal["auto", "on", "off"]
MODES: tuple[str, ...] = get_args(Mode)
AUTO_OFF = (
    "auto: off (a peer's KeyUpdate with update_requested would break a kTLS connection: OpenSSL "
    "never re-keys the kernel's TLS_TX state); --ktls on for peers that never request one"
)


class KtlsUnavailable(UsageError):
    """--ktls on, on a machine (kernel or OpenSSL) that cannot offload TLS records."""


@dataclass(frozen=True)
class KtlsStatus:
    """`available`: kernel and OpenSSL can offload; `enabled`: and zt asks OpenSSL to (`mode`);
    `tx_connections` / `rx_connections`: connections OpenSSL offloaded, per direction."""

    available: bool
    enabled: bool
    reason: str
    tx_connections: int = 0
    rx_connections: int = 0
    mode: str = "off"  # the setting that decided `enabled` (--ktls)

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
    if openssl_version < OPENSSL_3:
        reason = f"OpenSSL {openssl_version:#x} has no SSL_OP_ENABLE_KTLS (3.0 or newer needed)"
        return KtlsStatus(False, False, reason, tx_connections, rx_connections)
    ulps = (available_ulps or "").split()
    if ulp_errno == 0 or (ulp_errno is None and "tls" in ulps):
        if not wanted:
            return KtlsStatus(True, False, "available, not enabled", tx_connections, rx_connections)
        return KtlsStatus(
            True,
            True,
            "enabled (TLS 1.3: transmit only, OpenSSL 3.0)",
            tx_connections,
            rx_connections,
        )
    if ulp_errno is None:
        where = f"tcp_available_ulp: {' '.join(ulps) or 'unreadable'}"
        return KtlsStatus(
            False, False, f"no tls ULP in the kernel ({where})", tx_connections, rx_connections
        )
    if ulp_errno == errno.ENOENT:
        reason = "the kernel has no tls ULP (CONFIG_TLS unset and no tls module)"
    elif ulp_errno == errno.EPERM:
        reason = "loading the tls module needs CAP_NET_ADMIN (or modprobe tls beforehand)"
    else:
        reason = f"setsockopt TCP_ULP tls failed: {errno.errorcode.get(ulp_errno, ulp_errno)}"
    return KtlsStatus(False, False, reason, tx_connections, rx_connections)


def resolve(mode: str, *, openssl_version: int, available: bool, why: str) -> bool:
    """Whether zt asks OpenSSL for kTLS under the setting `mode`, on a machine where it is
    `available` (else `why` not). Raises UsageError for a mode that is not one of MODES, and
    KtlsUnavailable for `on` where kTLS cannot run."""
    if mode not in MODES:
        raise UsageError(f"--ktls: got {mode!r}, expected one of {', '.join(MODES)}")
    if mode == "on" and not available:
        raise KtlsUnavailable(f"--ktls on: this machine cannot offload TLS ({why})")
    # auto: no OpenSSL zt runs with re-keys kTLS TX on a TLS 1.3 KeyUpdate (module docstring).
    del openssl_version  # kept in the signature: a release that re-keys turns auto on here
    return mode == "on"


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
def probe(load: bool = True) -> tuple[int | None, str | None]:
    """(ulp_errno, available_ulps) of this machine, probed once per process. Only `load` tries
    the ULP, which makes the kernel load the tls module: a node told `--ktls off` or `auto`
    reads what is loaded and loads nothing (ulp_errno None)."""
    found = try_ulp() if load else None
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
    # Off unless asked for (`configure`): see the module docstring on TLS 1.3 KeyUpdate.
    mode: str = "off"
    wanted: bool = False
    tx: int = 0
    rx: int = 0


def wanted() -> bool:
    """Whether new connections ask OpenSSL for kTLS (then they must run TLS on the socket)."""
    return _Counts.wanted


def want(enabled: bool) -> KtlsStatus:
    """Ask for kTLS on new socket-path connections when the machine has it; returns the status."""
    _Counts.wanted = enabled
    _Counts.mode = "on" if enabled else "off"
    return status()


def configure(mode: str) -> KtlsStatus:
    """Apply the setting `mode` (MODES) for this process, once at start; raises UsageError /
    KtlsUnavailable as `resolve` does, before any connection exists."""
    now = status(load=mode == "on")
    wanted = resolve(
        mode,
        openssl_version=ssl.OPENSSL_VERSION_NUMBER,
        available=now.available,
        why=now.reason,
    )
    _Counts.wanted = wanted
    _Counts.mode = mode
    return status()


def status(*, load: bool | None = None) -> KtlsStatus:
    """This process's kTLS: what the machine offers, what was asked, connections offloaded.
    The kernel is probed by trying the ULP only when kTLS is asked for (`load`, default: the
    configured mode is `on`)."""
    ulp_errno, ulps = probe(_Counts.mode == "on" if load is None else load)
    found = ktls_status(
        wanted=_Counts.wanted,
        openssl_version=ssl.OPENSSL_VERSION_NUMBER,
        ulp_errno=ulp_errno,
        available_ulps=ulps,
        tx_connections=_Counts.tx,
        rx_connections=_Counts.rx,
    )
    reason = found.reason
    if _Counts.mode == "auto" and found.available:
        reason = AUTO_OFF
    return KtlsStatus(
        found.available, found.enabled, reason, found.tx_connections, found.rx_connections,
        _Counts.mode,
    )  # fmt: skip


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
        ("zt_ktls_enabled", "1 when new TLS connections ask OpenSSL for kTLS (--ktls)",
         "gauge", float(now.enabled)),
        ("zt_ktls_tx_connections_total", "TLS connections whose transmit side OpenSSL handed "
         "to the kernel", "counter", float(now.tx_connections)),
        ("zt_ktls_rx_connections_total", "TLS connections whose receive side OpenSSL handed to "
         "the kernel", "counter", float(now.rx_connections)),
    ]  # fmt: skip
