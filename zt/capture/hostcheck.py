"""Host checks run before anything is attached: each failure names the fix.

`evaluate` is pure (facts in, first problem out); `probe` reads the host; `ensure_bpffs` mounts
bpffs when pinning needs it ("bpffs not mounted (mounted by zt when needed)").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from zt.capture.errors import (
    BccMissingError,
    BpffsError,
    HostCheckError,
    KernelHeadersMissingError,
    KernelTooOldError,
    NoCgroup2Error,
    NotRootError,
)

# docs/design.md §6: Kernel floor: 5.14 (sk_lookup 5.9, getpeername hooks 5.8, SO_NETNS_COOKIE 5.14)
KERNEL_FLOOR: Final = (5, 14)
CGROUP2_ROOT: Final = Path("/sys/fs/cgroup/unified")
BPFFS: Final = Path("/sys/fs/bpf")
_BPF_FS_MAGIC: Final = 0xCAFE4A11
_CGROUP2_MAGIC: Final = 0x63677270


# The sk_lookup outbound mode tells a pod's own locally routed SYNs by `ingress_ifindex` (5.17).
SKLOOKUP_OUTBOUND_FLOOR: Final = (5, 17)


def supports_sklookup_outbound(release: str | None = None) -> bool:
    return kernel_version(release or os.uname().release) >= SKLOOKUP_OUTBOUND_FLOOR


def supports_original_source(release: str | None = None) -> bool:
    """Delivery from the caller's IP (zt/capture/origsrc.py): sk_lookup tells zt's delivery SYN
    by its 4-tuple *and* its arrival on lo, which needs `ingress_ifindex` too."""
    return supports_sklookup_outbound(release)


def check_mode(mode: str, release: str | None = None) -> None:
    """The sk_lookup outbound mode needs a newer kernel than the floor."""
    release = release or os.uname().release
    if mode == "sklookup" and not supports_sklookup_outbound(release):
        floor = ".".join(map(str, SKLOOKUP_OUTBOUND_FLOOR))
        raise KernelTooOldError(
            f"capture mode sklookup needs kernel >= {floor} (sk_lookup ingress_ifindex), "
            f"this is {release}",
            "use --capture connect, or boot a newer kernel",
        )


@dataclass(frozen=True)
class HostFacts:
    euid: int
    kernel: str  # uname -r
    cgroup2: Path | None  # the cgroup-v2 mount zt attaches at, None if there is none
    bcc_importable: bool
    headers: bool  # /lib/modules/<kernel>/build/include exists


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        return (0, 0)
    return int(m.group(1)), int(m.group(2))


def evaluate(facts: HostFacts) -> HostCheckError | None:
    """The first problem, in the order an operator would fix them, or None."""
    if facts.euid != 0:
        return NotRootError(
            f"capture needs root (euid is {facts.euid})", "run zt as root (CAP_BPF + CAP_NET_ADMIN)"
        )
    if kernel_version(facts.kernel) < KERNEL_FLOOR:
        return KernelTooOldError(
            f"kernel {facts.kernel} is older than {KERNEL_FLOOR[0]}.{KERNEL_FLOOR[1]}"
            " (needs sk_lookup, getpeername hooks and SO_NETNS_COOKIE)",
            "boot a kernel >= 5.14",
        )
    if facts.cgroup2 is None:
        return NoCgroup2Error(
            f"no cgroup v2 mount at {CGROUP2_ROOT} or /sys/fs/cgroup",
            f"mount -t cgroup2 none {CGROUP2_ROOT}",
        )
    if not facts.bcc_importable:
        return BccMissingError(
            "bcc's Python package is not importable",
            "apt-get install python3-bpfcc, then `make setup` links it into the venv",
        )
    if not facts.headers:
        return KernelHeadersMissingError(
            f"no kernel headers at /lib/modules/{facts.kernel}/build",
            "apt-get install linux-headers-amd64; `make setup` links build/source to the newest"
            " installed linux-headers-*-amd64 when the running kernel has no package",
        )
    return None


def _fs_magic(path: Path) -> int | None:
    """f_type of statfs(path), or None when path does not exist."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is the first long
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int.from_bytes(buf.raw[:8], "little")


def find_cgroup2() -> Path | None:
    for path in (CGROUP2_ROOT, Path("/sys/fs/cgroup")):
        if _fs_magic(path) == _CGROUP2_MAGIC:
            return path
    return None


def probe() -> HostFacts:
    release = platform.release()
    return HostFacts(
        euid=os.geteuid(),
        kernel=release,
        cgroup2=find_cgroup2(),
        bcc_importable=importlib.util.find_spec("bcc") is not None,
        headers=Path("/lib/modules", release, "build", "include").is_dir(),
    )


def check(*, need_compile: bool = True) -> Path:
    """Raise the first host problem; return the cgroup-v2 root to attach at."""
    facts = probe()
    if not need_compile:  # re-opening pins needs neither bcc nor headers
        facts = HostFacts(facts.euid, facts.kernel, facts.cgroup2, True, True)
    problem = evaluate(facts)
    if problem is not None:
        raise problem
    assert facts.cgroup2 is not None  # evaluate() returned a problem otherwise
    return facts.cgroup2


def bpffs_mounted(path: Path = BPFFS) -> bool:
    return _fs_magic(path) == _BPF_FS_MAGIC


def ensure_bpffs(path: Path = BPFFS) -> None:
    """Mount bpffs at path unless it is there already (pinning needs it)."""
    if bpffs_mounted(path):
        return
    path.mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpffsError(
            f"bpffs is not mounted at {path} and mounting it failed: {os.strerror(err)}",
            f"mount -t bpf bpf {path}",
        )
