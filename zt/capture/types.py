"""The typed surface of capture: what the node daemon passes in and reads back."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zt.capture.errors import PodSpecError
from zt.capture.maps import PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND, IPAddress

Mode = Literal["connect", "sklookup"]
MODES: tuple[Mode, ...] = ("connect", "sklookup")


@dataclass(frozen=True)
class ListenerSockets:
    """A pod's three listeners, opened inside its netns (zt.capture.netns.open_listener)."""

    outbound: socket.socket  # 15001
    inbound_plain: socket.socket  # 15006
    inbound_hbone: socket.socket  # 15008

    def __post_init__(self) -> None:
        for name, sock, port in (
            ("outbound", self.outbound, PORT_OUTBOUND),
            ("inbound_plain", self.inbound_plain, PORT_INBOUND),
            ("inbound_hbone", self.inbound_hbone, PORT_HBONE),
        ):
            if sock.type != socket.SOCK_STREAM or sock.fileno() < 0:
                raise PodSpecError(
                    f"listeners.{name}: got {sock!r}, expected an open TCP listening socket"
                )
            bound = sock.getsockname()[1]
            if bound != port:
                raise PodSpecError(
                    f"listeners.{name}: got a socket bound to port {bound}, expected {port}"
                )


@dataclass(frozen=True)
class PodCapture:
    """One pod to capture: its netns (name under /run/netns or path), IPs, and listeners.
    At most one IPv4 and one IPv6 address (the rewrite targets of connect4/connect6)."""

    name: str
    netns: Path
    ips: tuple[IPAddress, ...]
    listeners: ListenerSockets
    # zt delivers to the pod's app from the caller's IP: install the reply routing
    # (zt/capture/origsrc.py) with the pod, remove it with the pod
    original_source: bool = False

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > 63 or "\0" in self.name:
            raise PodSpecError(f"name: got {self.name!r}, expected 1-63 bytes of text")
        if not self.ips:
            raise PodSpecError("ips: got (), expected one IPv4 and/or one IPv6 address")
        for version in (4, 6):
            same = [ip for ip in self.ips if ip.version == version]
            if len(same) > 1:
                raise PodSpecError(
                    f"ips: got {[str(i) for i in same]}, expected at most one IPv{version} address"
                )
        for ip in self.ips:
            if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
                raise PodSpecError(f"ips: got {str(ip)!r}, expected a unicast pod address")

    @property
    def ip4(self) -> ipaddress.IPv4Address | None:
        return next((i for i in self.ips if isinstance(i, ipaddress.IPv4Address)), None)

    @property
    def ip6(self) -> ipaddress.IPv6Address | None:
        return next((i for i in self.ips if isinstance(i, ipaddress.IPv6Address)), None)


def parse_ips(values: list[str] | tuple[str, ...]) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for i, text in enumerate(values):
        try:
            out.append(ipaddress.ip_address(text))
        except ValueError:
            raise PodSpecError(
                f"ips[{i}]: got {text!r}, expected an IPv4 or IPv6 address"
            ) from None
    return tuple(out)


@dataclass(frozen=True)
class PodStatus:
    name: str
    netns: str
    netns_cookie: int
    slot: int
    ips: tuple[str, ...]
    listeners: tuple[str, ...]  # kinds registered in the sockmap: outbound/inbound/hbone
    dns: bool = False  # its DNS (port 53) goes to its DNS proxy on :15053

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "netns": self.netns,
            "netns_cookie": self.netns_cookie,
            "slot": self.slot,
            "ips": list(self.ips),
            "listeners": list(self.listeners),
            "dns": self.dns,
        }


@dataclass(frozen=True)
class LinkStatus:
    program: str
    target: str  # "cgroup:<path>" or "netns:<pod name>"
    link_id: int
    prog_id: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "target": self.target,
            "link_id": self.link_id,
            "prog_id": self.prog_id,
        }


@dataclass(frozen=True)
class CaptureStatus:
    mode: Mode
    pin_dir: str | None
    pods: tuple[PodStatus, ...]
    links: tuple[LinkStatus, ...]
    counters: dict[str, int] = field(default_factory=dict)
    dns: bool = False  # DNS capture linked: enrolled pods' port 53 goes to :15053

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "dns": self.dns,
            "pin_dir": self.pin_dir,
            "pods": [p.to_dict() for p in self.pods],
            "links": [link.to_dict() for link in self.links],
            "counters": dict(self.counters),
        }
