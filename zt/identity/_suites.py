"""Restrict one SSLContext's TLS 1.3 cipher suites via OpenSSL's SSL_CTX_set_ciphersuites.

Python's `ssl` has no call for TLS 1.3 suites (`set_ciphers` covers TLS <= 1.2) and an
OPENSSL_CONF `Ciphersuites =` line would change every context in the process. So we call
`SSL_CTX_set_ciphersuites(3)` on this context's own SSL_CTX, through the libssl already mapped into
the process by `_ssl` (same library, same symbols). CPython's PySSLContext starts with
`PyObject_HEAD; SSL_CTX *ctx;`, so the pointer sits at `id(ctx) + object.__basicsize__`. Before
writing anything we check the pointer reads back this context's options and verify mode, and after
writing we check `get_ciphers()` lists exactly the two suites; any mismatch raises instead of
running with OpenSSL's defaults (which include CHACHA20).
"""

from __future__ import annotations

import ctypes
import ssl
import threading
from functools import cache

from zt.identity.errors import CipherSuiteSetupError

# docs/design.md §2: "cipher suites TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256 only"
SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
_lock = threading.Lock()


def _mapped_libssl() -> str:
    """Path of the libssl mapped into this process (the one `_ssl` is linked against)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            if "/libssl.so" in path:
                return path
    raise CipherSuiteSetupError("no libssl mapped into the process (is `ssl` imported?)")


@cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(_mapped_libssl())
    lib.OpenSSL_version_num.restype = ctypes.c_ulong
    if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise CipherSuiteSetupError(
            f"libssl version {lib.OpenSSL_version_num():#x} differs from _ssl's "
            f"{ssl.OPENSSL_VERSION_NUMBER:#x}"
        )
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
    lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise CipherSuiteSetupError("SSLContext has no SSL_CTX pointer where CPython keeps it")
    # OpenSSL's verify mode is a bit set (SSL_VERIFY_PEER = 1 ...); Python's enum is not: compare
    # only "verifies peers or not".
    verifies = lib.SSL_CTX_get_verify_mode(ptr) != 0
    ok = lib.SSL_CTX_get_options(ptr) == int(ctx.options) and verifies == (
        ctx.verify_mode != ssl.CERT_NONE
    )
    if not ok:
        raise CipherSuiteSetupError("SSL_CTX pointer does not read back the context's settings")
    return int(ptr)


def set_tls13_suites(ctx: ssl.SSLContext, suites: tuple[str, ...]) -> None:
    """Allow only `suites` for TLS 1.3 on `ctx` (this context only), or raise."""
    lib = _lib()
    with _lock:
        ptr = _ssl_ctx_pointer(ctx, lib)
        if lib.SSL_CTX_set_ciphersuites(ptr, ":".join(suites).encode()) != 1:
            raise CipherSuiteSetupError(f"SSL_CTX_set_ciphersuites refused {suites}")
    got = tuple(c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3")
    if sorted(got) != sorted(suites):
        raise CipherSuiteSetupError(f"TLS 1.3 suites: expected {suites}, got {got}")


def restrict(ctx: ssl.SSLContext) -> None:
    """Allow only zt's two AES-GCM suites for TLS 1.3 on `ctx`."""
    set_tls13_suites(ctx, SUITES)
