"""BPF capture without iptables (docs/design.md §6): the only part of zt that imports bcc.

Public API for the node daemon:
    Capture.open(mode, *, pin_dir, dns=True)      host checks, compile once, attach (dns: steer
                                                  pods' port 53 to their DNS proxy on :15053)
    Capture.enroll(PodCapture) -> netns cookie    steer a pod to its listeners (or re-register)
    Capture.unenroll(name)
    Capture.original_destination(sock) -> OrigDst
    Capture.counters() -> dict[str, int];  Capture.status() -> CaptureStatus
    Capture.close(*, detach=None)
    read_status(pin_dir), remove_pins(pin_dir)     for `zt capture status` and clean-up
    zt.capture.netns: open_listener, open_dns_sockets, dial_marked, run_in_netns, netns_cookie,
                      marked_socket
"""

from zt.capture.capture import DEFAULT_PIN_DIR, Capture, read_status, remove_pins
from zt.capture.maps import OrigDst
from zt.capture.types import (
    CaptureStatus,
    LinkStatus,
    ListenerSockets,
    Mode,
    PodCapture,
    PodStatus,
    parse_ips,
)

__all__ = [
    "DEFAULT_PIN_DIR",
    "Capture",
    "CaptureStatus",
    "LinkStatus",
    "ListenerSockets",
    "Mode",
    "OrigDst",
    "PodCapture",
    "PodStatus",
    "parse_ips",
    "read_status",
    "remove_pins",
]
