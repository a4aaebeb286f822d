"""Compile bpf/ once per process with bcc and load every program with its attach type.

docs/design.md §6: one compile costs about 1 s and 150 MB, so each process compiles once;
`attach_type=` goes to `load_func`; constants go in as `-D` flags. This is the only module of
zt that imports bcc (lazily, so importing zt.capture works on a host without it).
bcc rewrites map calls only in its main file, so the C files are concatenated after the header
instead of being #included.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Final

from zt.capture import hostcheck, maps
from zt.capture.bpfsys import ATTACH
from zt.capture.errors import BccMissingError, BpfLoadError

# The BPF sources ship inside the package (zt/capture/bpf links to the top-level bpf/ in a checkout
# and holds regular files in the wheel), so a checkout and an install look them up the same way.
BPF_DIR: Final[Traversable] = resources.files("zt.capture") / "bpf"
HEADER: Final = "zt_capture.h"
SOURCES: Final = (
    "sk_lookup.c",
    "connect.c",
    "sockops.c",
    "getpeername.c",
    "getsockopt.c",
    "bind_guard.c",
    "dns_sendmsg.c",
    "dns_recvmsg.c",
)

_PROG_SK_LOOKUP: Final = 30  # enum bpf_prog_type
_PROG_SOCK_OPS: Final = 13
_PROG_SOCK_ADDR: Final = 18
_PROG_CGROUP_SOCKOPT: Final = 25

# program name -> (prog type, attach type name in bpfsys.ATTACH)
PROGRAMS: Final = {
    "zt_sk_lookup": (_PROG_SK_LOOKUP, "sk_lookup"),
    "zt_connect4": (_PROG_SOCK_ADDR, "cgroup_inet4_connect"),
    "zt_connect6": (_PROG_SOCK_ADDR, "cgroup_inet6_connect"),
    "zt_sockops": (_PROG_SOCK_OPS, "cgroup_sock_ops"),
    "zt_getpeername4": (_PROG_SOCK_ADDR, "cgroup_inet4_getpeername"),
    "zt_getpeername6": (_PROG_SOCK_ADDR, "cgroup_inet6_getpeername"),
    "zt_getsockopt": (_PROG_CGROUP_SOCKOPT, "cgroup_getsockopt"),
    "zt_bind4": (_PROG_SOCK_ADDR, "cgroup_inet4_bind"),
    "zt_bind6": (_PROG_SOCK_ADDR, "cgroup_inet6_bind"),
    "zt_sendmsg4": (_PROG_SOCK_ADDR, "cgroup_udp4_sendmsg"),
    "zt_sendmsg6": (_PROG_SOCK_ADDR, "cgroup_udp6_sendmsg"),
    "zt_recvmsg4": (_PROG_SOCK_ADDR, "cgroup_udp4_recvmsg"),
    "zt_recvmsg6": (_PROG_SOCK_ADDR, "cgroup_udp6_recvmsg"),
}
# The cgroup programs of each outbound mode (sk_lookup is per pod netns in both).
CGROUP_PROGRAMS: Final = {
    "connect": (
        "zt_connect4",
        "zt_connect6",
        "zt_sockops",
        "zt_getpeername4",
        "zt_getpeername6",
        "zt_getsockopt",
        "zt_bind4",
        "zt_bind6",
    ),
    "sklookup": ("zt_bind4", "zt_bind6"),
}
# DNS capture adds these in either mode (sk_lookup mode needs connect4/6 and getpeername4/6 for
# DNS over TCP and connected UDP; their other rules skip its pods: ZT_POD_OUT_SKLOOKUP).
DNS_PROGRAMS: Final = (
    "zt_sendmsg4",
    "zt_sendmsg6",
    "zt_recvmsg4",
    "zt_recvmsg6",
    "zt_connect4",
    "zt_connect6",
    "zt_getpeername4",
    "zt_getpeername6",
)


def cgroup_programs(mode: str, dns: bool) -> tuple[str, ...]:
    """The cgroup programs a capture in `mode` links, without duplicates, in a stable order."""
    names = CGROUP_PROGRAMS[mode] + (DNS_PROGRAMS if dns else ())
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Loaded:
    """fds of the maps (by name, see maps.MAPS) and programs (by name, see PROGRAMS)."""

    map_fds: dict[str, int]
    prog_fds: dict[str, int]


_lock = threading.Lock()
_loaded: Loaded | None = None
_module: Any = None  # the bcc.BPF object: owns the fds, must live as long as the process


def source_text() -> str:
    parts = [(BPF_DIR / HEADER).read_text()]
    for name in SOURCES:
        parts.append((BPF_DIR / name).read_text().replace(f'#include "{HEADER}"', ""))
    return "\n".join(parts)


def cflags() -> list[str]:
    return [
        f"-DZT_MARK={maps.ZT_MARK:#x}",
        f"-DZT_MARK_ORIGSRC={maps.ZT_MARK_ORIGSRC:#x}",
        f"-DZT_MAX_DELIVERIES={maps.MAX_DELIVERIES}",
        f"-DZT_PORT_OUTBOUND={maps.PORT_OUTBOUND}",
        f"-DZT_PORT_INBOUND={maps.PORT_INBOUND}",
        f"-DZT_PORT_HBONE={maps.PORT_HBONE}",
        f"-DZT_PORT_DNS={maps.PORT_DNS}",
        f"-DZT_PORT_DNS_PROXY={maps.PORT_DNS_PROXY}",
        f"-DZT_MAX_PODS={maps.MAX_PODS}",
        "-DZT_LOOPBACK_IFINDEX=1",
        *(["-DZT_HAVE_INGRESS_IFINDEX"] if hostcheck.supports_sklookup_outbound() else []),
    ]


def load() -> Loaded:
    """Compile and load (first call of the process), then return the same fds every time."""
    global _loaded, _module
    with _lock:
        if _loaded is None:
            _module, _loaded = _compile()
        return _loaded


def _compile() -> tuple[Any, Loaded]:
    try:
        import bcc  # noqa: PLC0415 - the one bcc import of zt, deferred on purpose
    except ImportError as exc:
        raise BccMissingError(
            f"bcc is not importable ({exc})",
            "apt-get install python3-bpfcc and run `make setup` (links it into the venv)",
        ) from None
    try:
        module = bcc.BPF(text=source_text().encode(), cflags=cflags())
        progs = {
            name: int(module.load_func(name.encode(), ptype, attach_type=ATTACH[at]).fd)
            for name, (ptype, at) in PROGRAMS.items()
        }
        map_fds = {
            name: int(bcc.lib.bpf_table_fd(module.module, name.encode())) for name in maps.MAPS
        }
    except Exception as exc:  # bcc raises bare Exception for compile and verifier failures
        raise BpfLoadError(f"loading bpf/ with bcc failed: {exc}") from exc
    bad = [n for n, fd in map_fds.items() if fd < 0]
    if bad:
        raise BpfLoadError(f"bcc created no map named {bad} (compare bpf/{HEADER} and maps.MAPS)")
    return module, Loaded(map_fds, progs)
