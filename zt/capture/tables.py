"""Typed operations on zt's maps (layouts in bpf/zt_capture.h, encodings in maps.py).

Works on map fds from either the compiled module or bpffs pins; knows nothing of links.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zt.capture import bpfsys, maps
from zt.capture.maps import IPAddress, OrigDst
from zt.capture.types import PodCapture

KINDS = (("outbound", maps.L_OUTBOUND), ("inbound", maps.L_INBOUND), ("hbone", maps.L_HBONE))


def possible_cpus() -> int:
    """Per-CPU values hold one slot per *possible* CPU ("0-1" -> 2)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


@dataclass(frozen=True)
class PodEntry:
    """What the maps hold about one enrolled pod."""

    cookie: int
    slot: int
    flags: int
    name: str
    netns: str


class Tables:
    def __init__(self, fds: dict[str, int]) -> None:
        self.fds = fds
        self._ncpu = possible_cpus()

    def reset(self) -> None:
        """Empty every map and zero the counters (a fresh capture starts clean)."""
        for name in ("zt_pods", "zt_ips", "zt_orig_addr", "zt_pod_meta", "zt_deliveries"):
            for key in bpfsys.map_keys(self.fds[name], maps.MAPS[name][0]):
                bpfsys.map_delete(self.fds[name], key)
        for i in range(maps.MAX_PODS * maps.L_COUNT):
            bpfsys.map_delete(self.fds["zt_listeners"], maps.u32(i), sockmap=True)
        zero = bytes(8 * self._ncpu)
        for i in range(len(maps.COUNTERS)):
            bpfsys.map_update(self.fds["zt_counters"], maps.u32(i), zero)

    def _items(self, name: str) -> list[tuple[bytes, bytes]]:
        fd = self.fds[name]
        key_size, value_size = maps.MAPS[name]
        out = []
        for key in bpfsys.map_keys(fd, key_size):
            value = bpfsys.map_lookup(fd, key, value_size)
            if value is not None:  # deleted between the two calls
                out.append((key, value))
        return out

    def pods(self) -> list[PodEntry]:
        meta = {maps.from_u64(k): maps.decode_meta(v) for k, v in self._items("zt_pod_meta")}
        out = []
        for key, value in self._items("zt_pods"):
            cookie = maps.from_u64(key)
            slot, flags = maps.decode_pod(value)
            name, netns = meta.get(cookie, (f"cookie {cookie}", "?"))
            out.append(PodEntry(cookie, slot, flags, name, netns))
        return sorted(out, key=lambda p: p.slot)

    def pod_name(self, cookie: int) -> str | None:
        raw = bpfsys.map_lookup(self.fds["zt_pod_meta"], maps.u64(cookie), 256)
        return maps.decode_meta(raw)[0] if raw is not None else None

    def ips(self) -> dict[IPAddress, int]:
        """Every enrolled pod IP -> the netns cookie of its pod."""
        return {
            maps.from_ip16(key[:16]): maps.from_u64(value[8:16])
            for key, value in self._items("zt_ips")
        }

    def free_slot(self) -> int | None:
        used = {p.slot for p in self.pods()}
        return next((s for s in range(maps.MAX_PODS) if s not in used), None)

    def put_pod(self, cookie: int, slot: int, flags: int, pod: PodCapture, netns: Path) -> None:
        """Order: listeners, then IPs (turns on sk_lookup steering), then the pod entry (turns on
        connect4/6 capture), so no program ever sees a pod without its listeners."""
        for sock, kind in (
            (pod.listeners.outbound, maps.L_OUTBOUND),
            (pod.listeners.inbound_plain, maps.L_INBOUND),
            (pod.listeners.inbound_hbone, maps.L_HBONE),
        ):
            key = maps.listener_key(slot, kind)
            bpfsys.map_update(self.fds["zt_listeners"], key, maps.u64(sock.fileno()))
        for ip, owner in self.ips().items():  # re-registration with changed IPs
            if owner == cookie and ip not in pod.ips:
                bpfsys.map_delete(self.fds["zt_ips"], maps.addr_key(ip))
        meta = maps.meta_value(pod.name, str(netns))
        bpfsys.map_update(self.fds["zt_pod_meta"], maps.u64(cookie), meta)
        for ip in pod.ips:
            value = maps.ipval(slot, flags, cookie)
            bpfsys.map_update(self.fds["zt_ips"], maps.addr_key(ip), value)
        value = maps.pod_value(pod.ip4, pod.ip6, slot, flags)
        bpfsys.map_update(self.fds["zt_pods"], maps.u64(cookie), value)

    def drop_pod(self, entry: PodEntry) -> tuple[IPAddress, ...]:
        """Reverse of put_pod (pod entry first); returns the IPs it held."""
        bpfsys.map_delete(self.fds["zt_pods"], maps.u64(entry.cookie))
        ips = tuple(ip for ip, cookie in self.ips().items() if cookie == entry.cookie)
        for ip in ips:
            bpfsys.map_delete(self.fds["zt_ips"], maps.addr_key(ip))
        for _name, kind in KINDS:
            key = maps.listener_key(entry.slot, kind)
            bpfsys.map_delete(self.fds["zt_listeners"], key, sockmap=True)
        bpfsys.map_delete(self.fds["zt_pod_meta"], maps.u64(entry.cookie))
        return ips

    def listeners(self, slot: int) -> tuple[str, ...]:
        """Kinds with a live listener (a closed socket leaves the sockmap by itself)."""
        fd = self.fds["zt_listeners"]
        return tuple(
            name
            for name, kind in KINDS
            if bpfsys.map_lookup(fd, maps.listener_key(slot, kind), 8) is not None
        )

    def pop_orig(self, app_ip: IPAddress, app_port: int) -> OrigDst | None:
        """The original destination sockops keyed by the app's (ip, port), removed as it is read
        (one BPF_MAP_LOOKUP_AND_DELETE_ELEM: hash maps have it since 5.14, zt's floor)."""
        key = maps.addr_key(app_ip, app_port)
        size = maps.MAPS["zt_orig_addr"][1]
        raw = bpfsys.map_lookup_and_delete(self.fds["zt_orig_addr"], key, size)
        return maps.decode_addr(raw) if raw is not None else None

    def put_delivery(self, key: bytes) -> None:
        """Let sk_lookup pass the SYN with this 4-tuple (maps.delivery_key) to the app."""
        bpfsys.map_update(self.fds["zt_deliveries"], key, maps.u32(1))

    def drop_delivery(self, key: bytes) -> None:
        bpfsys.map_delete(self.fds["zt_deliveries"], key)

    def counters(self) -> dict[str, int]:
        fd = self.fds["zt_counters"]
        out: dict[str, int] = {}
        for i, name in enumerate(maps.COUNTERS):
            raw = bpfsys.map_lookup(fd, maps.u32(i), 8 * self._ncpu)
            out[name] = maps.sum_percpu(raw) if raw is not None else 0
        return out
