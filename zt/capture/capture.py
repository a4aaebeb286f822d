"""Capture: attach zt's BPF programs, enroll pods, answer original destinations (docs/design.md §6).

BPF links, not legacy attachments: cgroup links at the cgroup-v2 root (the programs act only on
enrolled netns cookies) and one sk_lookup netns link per enrolled pod. Unpinned (tests), all of it
vanishes with the process; pinned (the daemon), maps, links and the sk_lookup program live in
bpffs, so capture survives a restart fail-closed until the new process re-registers listeners.

Pin layout under pin_dir: one file per map (its name), `prog_zt_sk_lookup`, `link_<program>` per
cgroup link, `link_sk_lookup_<netns cookie>` per pod. The cgroup links say what a pinned capture
does: `link_zt_sockops` only in connect mode, `link_zt_sendmsg4` only with DNS capture.

DNS capture (`dns=True`, the default) steers every enrolled pod's UDP and TCP to port 53 to its DNS
proxy on 127.0.0.1:15053 / [::1]:15053 in the pod netns (docs/design.md §6, DNS).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from zt.capture import bpfsys, hostcheck, loader, maps, origsrc, routing
from zt.capture.errors import (
    BpfSyscallError,
    CaptureBusyError,
    CaptureError,
    CaptureIncompatibleError,
    CaptureNotRunningError,
    DeliveriesFullError,
    NoOriginalDestinationError,
    PodNotEnrolledError,
    PodSpecError,
)
from zt.capture.maps import OrigDst
from zt.capture.netns import netns_cookie, netns_path
from zt.capture.tables import PodEntry, Tables
from zt.capture.types import MODES, CaptureStatus, LinkStatus, Mode, PodCapture, PodStatus
from zt.errors import UsageError

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/zt")
_SK_LOOKUP_PIN = "prog_zt_sk_lookup"
_CONNECT_MODE_PIN = "link_zt_sockops"  # connect4/6 are linked in both modes when DNS is captured
_DNS_PIN = "link_zt_sendmsg4"


def _pinned_mode(pin_dir: Path) -> Mode:
    return "connect" if (pin_dir / _CONNECT_MODE_PIN).exists() else "sklookup"


@dataclass(frozen=True)
class _Link:
    fd: int
    program: str
    target: str


class Capture:
    """One node's capture. Open with Capture.open(); close() detaches what it attached."""

    _compiled_in_use: ClassVar[bool] = False
    _class_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        mode: Mode,
        *,
        cgroup: Path,
        pin_dir: Path | None,
        map_fds: dict[str, int],
        sk_lookup_fd: int,
        owned_fds: list[int],
        uses_compiled: bool,
        dns: bool = True,
    ) -> None:
        self.mode: Mode = mode
        self.dns = dns  # enrolled pods' DNS goes to their DNS proxy (ZT_POD_DNS)
        self.cgroup = cgroup
        self.pin_dir = pin_dir
        self._tables = Tables(map_fds)
        self._sk_lookup_fd = sk_lookup_fd
        self._owned = owned_fds  # fds from bpffs pins: closed in close()
        self._uses_compiled = uses_compiled
        self._links: dict[str, _Link] = {}  # pin name -> link
        self._lock = threading.Lock()
        self._closed = False

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, mode: Mode = "connect", *, pin_dir: Path | None = None, dns: bool = True
    ) -> Capture:
        """Host checks, then compile/load once per process (or re-open pins) and attach.

        pin_dir=None: unpinned (tests). Otherwise pins live there (the daemon uses
        DEFAULT_PIN_DIR); when it already holds a capture (zt restarted) that one is re-opened
        without compiling, and enroll() re-registers each pod's new listeners.
        dns: capture enrolled pods' DNS (port 53) into their DNS proxy on :15053; False leaves
        it alone (the node's `--no-dns`)."""
        if mode not in MODES:
            raise UsageError(f"mode: got {mode!r}, expected one of {list(MODES)}")
        hostcheck.check_mode(mode)
        existing = pin_dir is not None and (pin_dir / "zt_pods").exists()
        cgroup = hostcheck.check(need_compile=not existing)
        if pin_dir is None:
            return cls._fresh(mode, cgroup, None, dns)
        hostcheck.ensure_bpffs()
        if not existing:
            return cls._fresh(mode, cgroup, pin_dir, dns)
        missing = _missing_pins(pin_dir)
        if missing:  # e.g. pins left by an older zt across an upgrade
            raise CaptureIncompatibleError(
                f"pin_dir: the capture pinned under {pin_dir} was made by another zt build"
                f" (no {', '.join(missing)}); remove it (`zt capture remove --pin-dir {pin_dir}`)"
                " and start zt again"
            )
        cap = cls._reopen(pin_dir)
        if cap.mode != mode or cap.dns != dns:
            cap.close(detach=False)
            field, got, runs = (
                ("mode", repr(mode), repr(cap.mode))
                if cap.mode != mode
                else ("dns", str(dns), f"with dns={cap.dns}")
            )
            raise CaptureError(
                f"{field}: got {got}, but the capture pinned under {pin_dir} runs {runs};"
                " remove it first (`zt capture remove`)"
            )
        return cap

    @classmethod
    def _fresh(cls, mode: Mode, cgroup: Path, pin_dir: Path | None, dns: bool) -> Capture:
        with cls._class_lock:
            if cls._compiled_in_use:
                raise CaptureBusyError(
                    "this process already has an open Capture over the compiled programs;"
                    " close it first (one compile per process, docs/design.md §6)"
                )
            loaded = loader.load()
            cls._compiled_in_use = True
        cap = cls(
            mode,
            cgroup=cgroup,
            pin_dir=pin_dir,
            map_fds=dict(loaded.map_fds),
            sk_lookup_fd=loaded.prog_fds["zt_sk_lookup"],
            owned_fds=[],
            uses_compiled=True,
            dns=dns,
        )
        try:
            cap._tables.reset()
            if pin_dir is not None:
                pin_dir.mkdir(parents=True, exist_ok=True)
                for name, fd in loaded.map_fds.items():
                    bpfsys.obj_pin(fd, pin_dir / name)
                bpfsys.obj_pin(loaded.prog_fds["zt_sk_lookup"], pin_dir / _SK_LOOKUP_PIN)
            cap._attach_cgroup(loaded.prog_fds)
        except BaseException:
            cap.close(detach=True)
            raise
        return cap

    @classmethod
    def _reopen(cls, pin_dir: Path) -> Capture:
        """A Capture over the pins of a running (or orphaned) capture; attaches nothing."""
        if not (pin_dir / "zt_pods").exists():
            raise CaptureNotRunningError(f"no capture pinned under {pin_dir}")
        map_fds = _open_pinned_maps(pin_dir)
        owned = list(map_fds.values())
        try:
            prog = bpfsys.obj_get(pin_dir / _SK_LOOKUP_PIN)
            owned.append(prog)
            links = {
                entry.name: bpfsys.obj_get(entry)
                for entry in sorted(pin_dir.iterdir())
                if entry.name.startswith("link_")
            }
        except BaseException:
            for fd in owned:
                os.close(fd)
            raise
        cap = cls(
            _pinned_mode(pin_dir),
            cgroup=hostcheck.find_cgroup2() or hostcheck.CGROUP2_ROOT,
            pin_dir=pin_dir,
            map_fds=map_fds,
            sk_lookup_fd=prog,
            owned_fds=owned,
            uses_compiled=False,
            dns=_DNS_PIN in links,
        )
        for pin, fd in links.items():
            cap._links[pin] = _Link(fd, *cap._describe_pin(pin))
        return cap

    @classmethod
    def follow(cls, pin_dir: Path) -> Capture:
        """A node worker process's view of the capture its leader pinned: the maps only, for
        original_destination(). It attaches, enrolls and compiles nothing, and holds no link fd
        (a link lives while any fd or pin holds it: the leader's unenroll must still detach)."""
        if not (pin_dir / "zt_pods").exists():
            raise CaptureNotRunningError(f"no capture pinned under {pin_dir}")
        map_fds = _open_pinned_maps(pin_dir)
        owned = list(map_fds.values())
        return cls(
            _pinned_mode(pin_dir),
            cgroup=hostcheck.find_cgroup2() or hostcheck.CGROUP2_ROOT,
            pin_dir=pin_dir,
            map_fds=map_fds,
            sk_lookup_fd=-1,  # enroll() is the leader's: a follower has no program to link
            owned_fds=owned,
            uses_compiled=False,
            dns=(pin_dir / _DNS_PIN).exists(),
        )

    def _describe_pin(self, pin: str) -> tuple[str, str]:
        """(program, target) of a link pin: link_<program> or link_sk_lookup_<netns cookie>."""
        if pin.startswith("link_sk_lookup_"):
            cookie = int(pin.removeprefix("link_sk_lookup_"))
            name = self._tables.pod_name(cookie) or f"cookie {cookie}"
            return "zt_sk_lookup", f"netns:{name}"
        return pin.removeprefix("link_"), f"cgroup:{self.cgroup}"

    def _attach_cgroup(self, prog_fds: dict[str, int]) -> None:
        cg = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for prog in loader.cgroup_programs(self.mode, self.dns):
                fd = bpfsys.link_create(prog_fds[prog], cg, loader.PROGRAMS[prog][1])
                self._add_link(f"link_{prog}", _Link(fd, prog, f"cgroup:{self.cgroup}"))
        finally:
            os.close(cg)

    def _add_link(self, pin: str, link: _Link) -> None:
        self._links[pin] = link
        if self.pin_dir is not None:
            bpfsys.obj_pin(link.fd, self.pin_dir / pin)

    def _drop_link(self, pin: str) -> None:
        link = self._links.pop(pin, None)
        if link is None:
            return
        if self.pin_dir is not None:
            (self.pin_dir / pin).unlink(missing_ok=True)
        os.close(link.fd)  # the last reference: the kernel detaches the program

    # ---- pods ----------------------------------------------------------------------------

    def enroll(self, pod: PodCapture) -> int:
        """Steer pod's traffic to its listeners; returns the pod's netns cookie.

        Enrolling an already enrolled pod (same netns) re-registers its listeners: what a
        restarted daemon does for every pod after Capture.open() re-opened the pins."""
        with self._lock:
            self._check_open()
            path = netns_path(pod.netns)
            cookie = netns_cookie(path)
            current = {p.cookie: p for p in self._tables.pods()}
            slot = current[cookie].slot if cookie in current else self._tables.free_slot()
            if slot is None:
                raise CaptureError(f"pods: {maps.MAX_PODS} enrolled already (ZT_MAX_PODS)")
            owners = self._tables.ips()
            for ip in pod.ips:
                if owners.get(ip, cookie) != cookie:
                    raise PodSpecError(f"ips: got {str(ip)!r}, which another enrolled pod owns")
            flags = (maps.POD_HAS_IP4 if pod.ip4 else 0) | (maps.POD_HAS_IP6 if pod.ip6 else 0)
            if self.mode == "sklookup":
                flags |= maps.POD_OUT_SKLOOKUP
            if self.dns:
                flags |= maps.POD_DNS
            if pod.original_source:
                flags |= maps.POD_ORIGSRC
            self._tables.put_pod(cookie, slot, flags, pod, path)
            pin = f"link_sk_lookup_{cookie}"
            if pin not in self._links:
                nsfd = os.open(path, os.O_RDONLY)
                try:
                    fd = bpfsys.link_create(self._sk_lookup_fd, nsfd, "sk_lookup")
                finally:
                    os.close(nsfd)
                self._add_link(pin, _Link(fd, "zt_sk_lookup", f"netns:{pod.name}"))
            if self.mode == "sklookup" and not routing.installed(path):
                routing.install(routing.RoutingPlan(path, pod.ips, routing.interfaces(path)))
            # Last, once the pod entry exists: a failure before leaves nothing of it behind, and
            # unenroll()/close() remove it by presence. Without original source, remove what a
            # previous run left (a fresh capture does not know that run's flags).
            reply = origsrc.ReplyRouting.of(path, pod.ips)
            if pod.original_source:
                origsrc.install(reply)
            else:
                origsrc.remove(reply)
            return cookie

    def unenroll(self, name: str) -> None:
        """Stop capturing a pod: pod entry, IPs, listeners, its sk_lookup link, its routing."""
        with self._lock:
            self._check_open()
            entry = next((p for p in self._tables.pods() if p.name == name), None)
            if entry is None:
                raise PodNotEnrolledError(f"pod: got {name!r}, expected an enrolled pod's name")
            self._forget(entry)

    def _forget(self, entry: PodEntry) -> None:
        ips = self._tables.drop_pod(entry)
        self._drop_link(f"link_sk_lookup_{entry.cookie}")
        netns = Path(entry.netns)
        if entry.flags & maps.POD_OUT_SKLOOKUP and netns.exists():
            routing.remove(routing.RoutingPlan(netns, ips, routing.interfaces(netns)))
        origsrc.remove(origsrc.ReplyRouting.of(netns, ips))  # by presence, whatever the flags

    # ---- the proxy's questions -------------------------------------------------------------

    def original_destination(self, sock: socket.socket) -> OrigDst:
        """Where the peer meant to connect, for a socket accepted on one of a pod's listeners.

        connect mode: getsockopt(SO_ORIGINAL_DST), which bpf/getsockopt.c answers like
        netfilter after a REDIRECT (one syscall); should it not (no memory for the socket's
        storage), the entry sockops keyed by the app's (ip, port) = our peer is popped from the
        map. Everything else (inbound; sk_lookup mode): sk_lookup does not rewrite, so
        getsockname() is the original destination (docs/design.md §6)."""
        local = sock.getsockname()
        if self.mode == "connect" and local[1] == maps.PORT_OUTBOUND:
            # only 15001's sockets: netfilter in a pod could answer for inbound ones too
            answered = _ask_original_dst(sock)
            if answered is not None:
                return answered
            peer = sock.getpeername()
            orig = self._tables.pop_orig(_ip(peer[0]), peer[1])
            if orig is None:
                raise NoOriginalDestinationError(
                    f"socket from {peer[0]}:{peer[1]}: no captured original destination"
                )
            return orig
        return OrigDst(_ip(local[0]), local[1])

    @contextlib.contextmanager
    def delivering(
        self, src: maps.IPAddress, sport: int, dst: maps.IPAddress, dport: int
    ) -> Iterator[None]:
        """While zt connects from the caller's (src, sport) to the app's (dst, dport), sk_lookup
        lets that SYN reach the app (zt/capture/origsrc.py); the entry goes once connect()
        returned, whatever it returned. Leader and followers alike (the maps are shared).
        DeliveriesFullError when ZT_MAX_DELIVERIES are mid-handshake already (a plain hash map:
        the update fails with E2BIG rather than evict another delivery's entry)."""
        key = maps.delivery_key(src, sport, dst, dport)
        try:
            self._tables.put_delivery(key)
        except BpfSyscallError as exc:
            if exc.errno != errno.E2BIG:
                raise
            raise DeliveriesFullError(
                f"zt_deliveries: {maps.MAX_DELIVERIES} deliveries from callers' IPs mid-handshake"
                f" already (ZT_MAX_DELIVERIES); {src} -> {dst}:{dport} cannot be added"
            ) from exc
        try:
            yield
        finally:
            self._tables.drop_delivery(key)

    def counters(self) -> dict[str, int]:
        return self._tables.counters()

    def status(self) -> CaptureStatus:
        with self._lock:
            self._check_open()
            ips = self._tables.ips()
            pods = tuple(
                PodStatus(
                    name=p.name,
                    netns=p.netns,
                    netns_cookie=p.cookie,
                    slot=p.slot,
                    ips=tuple(sorted(str(ip) for ip, c in ips.items() if c == p.cookie)),
                    listeners=self._tables.listeners(p.slot),
                    dns=bool(p.flags & maps.POD_DNS),
                )
                for p in self._tables.pods()
            )
            links = tuple(
                LinkStatus(link.program, link.target, *bpfsys.link_info(link.fd))
                for link in self._links.values()
            )
            return CaptureStatus(
                mode=self.mode,
                pin_dir=str(self.pin_dir) if self.pin_dir else None,
                pods=pods,
                links=links,
                counters=self._tables.counters(),
                dns=self.dns,
            )

    # ---- closing -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CaptureError("this Capture is closed")

    def close(self, *, detach: bool | None = None) -> None:
        """Release this process's hold. detach (default: True when unpinned) also removes every
        attachment, routing, map entry and pin; detach=False leaves a pinned capture running
        (fail-closed) for the next zt process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if detach if detach is not None else self.pin_dir is None:
                    self._detach_all()
            finally:
                for link in self._links.values():
                    os.close(link.fd)
                self._links.clear()
                for fd in self._owned:
                    os.close(fd)
                if self._uses_compiled:
                    with Capture._class_lock:
                        Capture._compiled_in_use = False

    def _detach_all(self) -> None:
        for entry in self._tables.pods():
            self._forget(entry)
        for pin in list(self._links):
            self._drop_link(pin)
        if self._uses_compiled:
            self._tables.reset()
        if self.pin_dir is not None and self.pin_dir.exists():
            for pinned in self.pin_dir.iterdir():
                pinned.unlink()
            self.pin_dir.rmdir()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ask_original_dst(sock: socket.socket) -> OrigDst | None:
    """SO_ORIGINAL_DST as netfilter or bpf/getsockopt.c answers it: at SOL_IP for an IPv4
    original (asked first: the common case), at SOL_IPV6 for an IPv6 one; None when neither."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, maps.SO_ORIGINAL_DST, maps.SOCKADDR_IN_SIZE)
        return maps.decode_sockaddr_in(raw)
    except OSError:
        pass
    try:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, maps.SO_ORIGINAL_DST, maps.SOCKADDR_IN6_SIZE)
        return maps.decode_sockaddr_in6(raw)
    except OSError:
        return None


def _ip(host: str) -> maps.IPAddress:
    """A socket address host as an IP; IPv4-mapped (dual-stack sockets) unwrapped."""
    ip = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def read_status(pin_dir: Path = DEFAULT_PIN_DIR) -> CaptureStatus:
    """Status of the capture pinned under pin_dir, without attaching or changing anything."""
    if not (pin_dir / "zt_pods").exists():
        raise CaptureNotRunningError(
            f"capture is not running: nothing pinned under {pin_dir} (start `zt run`)"
        )
    cap = Capture._reopen(pin_dir)
    try:
        return cap.status()
    finally:
        cap.close(detach=False)


def remove_pins(pin_dir: Path = DEFAULT_PIN_DIR) -> None:
    """Detach and remove a pinned capture (operator clean-up, tests)."""
    if not (pin_dir / "zt_pods").exists():
        raise CaptureNotRunningError(f"nothing pinned under {pin_dir}")
    if _missing_pins(pin_dir):
        # Another build's pins: unpin everything; each link detaches with its last reference.
        for entry in pin_dir.iterdir():
            entry.unlink()
        pin_dir.rmdir()
        return
    Capture._reopen(pin_dir).close(detach=True)


def _open_pinned_maps(pin_dir: Path) -> dict[str, int]:
    """An fd for every map pinned under `pin_dir`; none left open if one fails."""
    fds: dict[str, int] = {}
    try:
        for name in maps.MAPS:
            fds[name] = bpfsys.obj_get(pin_dir / name)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _missing_pins(pin_dir: Path) -> list[str]:
    """The pins this build needs that `pin_dir` lacks (a capture pinned by another build)."""
    return [name for name in (*maps.MAPS, _SK_LOOKUP_PIN) if not (pin_dir / name).exists()]
