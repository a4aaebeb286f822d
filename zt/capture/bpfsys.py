"""Raw bpf(2) and setns(2) through ctypes: what bcc 0.26's Python API lacks (docs/design.md §6:
sk_lookup/cgroup links need raw bpf(BPF_LINK_CREATE), sockmap updates by fd, pins).

Every failing call raises BpfSyscallError with the kernel's errno; nothing here knows zt's maps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from pathlib import Path

from zt.capture.errors import BpfSyscallError

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_BPF = 321  # x86_64

# enum bpf_cmd (include/uapi/linux/bpf.h)
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_MAP_LOOKUP_AND_DELETE_ELEM = 21
_OBJ_PIN = 6
_OBJ_GET = 7
_OBJ_GET_INFO_BY_FD = 15
_LINK_CREATE = 28
_ENABLE_STATS = 32
_LINK_DETACH = 34
_STATS_RUN_TIME = 0  # enum bpf_stats_type BPF_STATS_RUN_TIME
_PROG_INFO_SIZE = 232  # struct bpf_prog_info up to run_cnt and beyond
_PROG_RUN_TIME_NS = 192  # offsetof(struct bpf_prog_info, run_time_ns); run_cnt follows

CLONE_NEWNET = 0x40000000

# enum bpf_attach_type values zt uses
ATTACH = {
    "cgroup_sock_ops": 3,
    "cgroup_inet4_bind": 8,
    "cgroup_inet6_bind": 9,
    "cgroup_inet4_connect": 10,
    "cgroup_inet6_connect": 11,
    "cgroup_udp4_sendmsg": 14,
    "cgroup_udp6_sendmsg": 15,
    "cgroup_udp4_recvmsg": 19,
    "cgroup_udp6_recvmsg": 20,
    "cgroup_getsockopt": 21,
    "cgroup_inet4_getpeername": 29,
    "cgroup_inet6_getpeername": 30,
    "sk_lookup": 36,
}


def _call(cmd: int, attr: ctypes.Array[ctypes.c_uint8], op: str) -> int:
    ret = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        raise BpfSyscallError(op, ctypes.get_errno())
    return ret


def _attr(*words: tuple[int, int, int]) -> ctypes.Array[ctypes.c_uint8]:
    """Build a zeroed 128-byte union bpf_attr from (offset, size, value) triples."""
    buf = (ctypes.c_uint8 * 128)()
    for offset, size, value in words:
        buf[offset : offset + size] = list(value.to_bytes(size, "little"))
    return buf


def _ptr(buf: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buf)


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    k, v = (
        ctypes.create_string_buffer(key, len(key)),
        ctypes.create_string_buffer(value, len(value)),
    )
    attr = _attr((0, 4, map_fd), (8, 8, _ptr(k)), (16, 8, _ptr(v)), (24, 8, flags))
    _call(_MAP_UPDATE_ELEM, attr, "bpf(MAP_UPDATE_ELEM)")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value, or None when the key is absent (ENOENT)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    attr = _attr((0, 4, map_fd), (8, 8, _ptr(k)), (16, 8, _ptr(v)))
    try:
        _call(_MAP_LOOKUP_ELEM, attr, "bpf(MAP_LOOKUP_ELEM)")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_lookup_and_delete(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value, removed in the same call; None when the key is absent (ENOENT)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    attr = _attr((0, 4, map_fd), (8, 8, _ptr(k)), (16, 8, _ptr(v)))
    try:
        _call(_MAP_LOOKUP_AND_DELETE_ELEM, attr, "bpf(MAP_LOOKUP_AND_DELETE_ELEM)")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_delete(map_fd: int, key: bytes, *, sockmap: bool = False) -> bool:
    """Delete; False when the key was absent (a SOCKMAP says EINVAL for an empty slot)."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _call(_MAP_DELETE_ELEM, _attr((0, 4, map_fd), (8, 8, _ptr(k))), "bpf(MAP_DELETE_ELEM)")
    except BpfSyscallError as exc:
        if exc.errno == errno.ENOENT or (sockmap and exc.errno == errno.EINVAL):
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (GET_NEXT_KEY from no key, then from each key)."""
    keys: list[bytes] = []
    cur: ctypes.Array[ctypes.c_char] | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while len(keys) < 1_000_000:  # bound: no zt map holds more
        key_ptr = 0 if cur is None else _ptr(cur)
        attr = _attr((0, 4, map_fd), (8, 8, key_ptr), (16, 8, _ptr(nxt)))
        try:
            _call(_MAP_GET_NEXT_KEY, attr, "bpf(MAP_GET_NEXT_KEY)")
        except BpfSyscallError as exc:
            if exc.errno == errno.ENOENT:
                break
            raise
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)
    return keys


def obj_pin(fd: int, path: Path) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _call(_OBJ_PIN, _attr((0, 8, _ptr(p)), (8, 4, fd)), f"bpf(OBJ_PIN {path})")


def obj_get(path: Path) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _call(_OBJ_GET, _attr((0, 8, _ptr(p))), f"bpf(OBJ_GET {path})")


def link_create(prog_fd: int, target_fd: int, attach_type: str) -> int:
    """A BPF link: the attachment lives as long as this fd (or a pin of it)."""
    attr = _attr((0, 4, prog_fd), (4, 4, target_fd), (8, 4, ATTACH[attach_type]))
    return _call(_LINK_CREATE, attr, f"bpf(LINK_CREATE {attach_type})")


def link_detach(link_fd: int) -> None:
    _call(_LINK_DETACH, _attr((0, 4, link_fd)), "bpf(LINK_DETACH)")


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel counts run time and runs of every program
    while the returned fd is open (like `sysctl kernel.bpf_stats_enabled=1`, but it ends with the
    fd, even when the process dies)."""
    return _call(_ENABLE_STATS, _attr((0, 4, _STATS_RUN_TIME)), "bpf(ENABLE_STATS)")


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program, as `bpftool prog show` prints them (0 unless stats
    are enabled)."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    attr = _attr((0, 4, prog_fd), (4, 4, _PROG_INFO_SIZE), (8, 8, _ptr(info)))
    _call(_OBJ_GET_INFO_BY_FD, attr, "bpf(OBJ_GET_INFO_BY_FD prog)")
    run_time_ns, run_cnt = struct.unpack_from("<QQ", info.raw, _PROG_RUN_TIME_NS)
    return int(run_time_ns), int(run_cnt)


def link_info(link_fd: int) -> tuple[int, int]:
    """(link id, prog id) of a link fd, as `bpftool link show` lists them."""
    info = ctypes.create_string_buffer(64)
    attr = _attr((0, 4, link_fd), (4, 4, 64), (8, 8, _ptr(info)))
    _call(_OBJ_GET_INFO_BY_FD, attr, "bpf(OBJ_GET_INFO_BY_FD)")
    raw = info.raw
    return int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[8:12], "little")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        raise BpfSyscallError("setns", ctypes.get_errno())
