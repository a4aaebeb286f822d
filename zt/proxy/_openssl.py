"""Per-connection OpenSSL settings Python's `ssl` does not expose, on an `ssl.SSLSocket`'s own
SSL object (never process-wide), through the libssl `_ssl` already mapped (zt/identity/_suites.py
explains the approach and checks the library version).

CPython's `_ssl._SSLSocket` starts with `PyObject_HEAD; PyObject *Socket; SSL *ssl;`. Before using
the pointer we check it reads back this connection's fd and this context's SSL_CTX.
"""

from __future__ import annotations

import ctypes
import ssl
from functools import cache

from zt.identity import _suites
from zt.identity.errors import CipherSuiteSetupError

SSL_CTRL_SET_READ_AHEAD = 41  # openssl/ssl.h
SSL_KEY_UPDATE_NOT_REQUESTED, SSL_KEY_UPDATE_REQUESTED = 0, 1  # openssl/ssl.h


@cache
def _lib() -> ctypes.CDLL:
    _suites._lib()  # the version check
    lib = ctypes.CDLL(_suites._mapped_libssl())
    lib.SSL_get_fd.restype = ctypes.c_int
    lib.SSL_get_fd.argtypes = [ctypes.c_void_p]
    lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_set_options.restype = ctypes.c_uint64
    lib.SSL_set_options.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    lib.SSL_set_default_read_buffer_len.restype = None
    lib.SSL_set_default_read_buffer_len.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.SSL_key_update.restype = ctypes.c_int
    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _ssl_pointer(tls: ssl.SSLSocket, lib: ctypes.CDLL) -> int:
    obj = tls._sslobj  # type: ignore[attr-defined]
    if obj is None:
        raise CipherSuiteSetupError("SSLSocket has no SSL object")
    ptr = ctypes.c_void_p.from_address(
        id(obj) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    ).value
    ctx = _suites._ssl_ctx_pointer(tls.context, _suites._lib())
    if not ptr or lib.SSL_get_fd(ptr) != tls.fileno() or lib.SSL_get_SSL_CTX(ptr) != ctx:
        raise CipherSuiteSetupError(
            "SSL pointer does not read back the connection's fd and context"
        )
    return int(ptr)


def read_ahead(tls: ssl.SSLSocket, size: int) -> None:
    """Let OpenSSL read up to `size` bytes of records per recv(2) on `tls` (SSL_set_read_ahead,
    SSL_set_default_read_buffer_len); before its first read."""
    lib = _lib()
    ptr = _ssl_pointer(tls, lib)
    lib.SSL_set_default_read_buffer_len(ptr, size)
    lib.SSL_ctrl(ptr, SSL_CTRL_SET_READ_AHEAD, 1, None)


def set_options(tls: ssl.SSLSocket, options: int) -> None:
    """SSL_set_options on `tls` alone (e.g. SSL_OP_ENABLE_KTLS, which `ssl` has no name for)."""
    lib = _lib()
    if lib.SSL_set_options(_ssl_pointer(tls, lib), options) & options != options:
        raise CipherSuiteSetupError(f"SSL_set_options did not keep {options:#x}")


def key_update(tls: ssl.SSLSocket, *, requested: bool) -> None:
    """Schedule a TLS 1.3 KeyUpdate on `tls` (SSL_key_update), sent with its next write; with
    `requested` the peer must answer with its own (RFC 8446 §4.6.3). zt itself never calls this:
    the kTLS tests play a peer that does (zt/proxy/ktls.py explains why it matters)."""
    lib = _lib()
    kind = SSL_KEY_UPDATE_REQUESTED if requested else SSL_KEY_UPDATE_NOT_REQUESTED
    if lib.SSL_key_update(_ssl_pointer(tls, lib), kind) != 1:
        raise CipherSuiteSetupError("SSL_key_update refused (not TLS 1.3, or a handshake runs)")
