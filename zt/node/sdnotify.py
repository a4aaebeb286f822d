"""systemd's readiness notification (sd_notify(3)) without libsystemd.

Under `Type=notify` (examples/systemd/zt.service) systemd starts the units ordered after zt only
once zt says READY=1: one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET, a path or, when
it starts with '@', an abstract name. The node sends it once, when its readiness (the verdict
:15021/healthz/ready serves) first holds; outside systemd $NOTIFY_SOCKET is unset: nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

from zt.errors import ZtError
from zt.telemetry.endpoints import Readiness

log = logging.getLogger("zt.node")

NOTIFY_SOCKET = "NOTIFY_SOCKET"
READY = "READY=1"
STOPPING = "STOPPING=1"  # sd_notify(3): "the service is beginning its shutdown"
POLL_INTERVAL = 0.1  # s between readiness checks until it first holds


class NotifySocketError(ZtError):
    """$NOTIFY_SOCKET names no usable socket, or the datagram could not be sent."""

    reason = "notify_socket"


def notify_address(value: str) -> str:
    """The address $NOTIFY_SOCKET names, in Python's AF_UNIX form (abstract: a leading NUL)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifySocketError(
        f"{NOTIFY_SOCKET}: got {value!r}, expected an absolute socket path or '@' and an"
        " abstract name"
    )


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification datagram; False (and nothing sent) when $NOTIFY_SOCKET is unset."""
    value = (os.environ if environ is None else environ).get(NOTIFY_SOCKET, "")
    if not value:
        return False
    address = notify_address(value)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        raise NotifySocketError(f"{NOTIFY_SOCKET}={value!r}: sending {message!r}: {exc}") from exc
    return True


async def notify_when_ready(
    readiness: Readiness, environ: Mapping[str, str] | None = None, interval: float = POLL_INTERVAL
) -> None:
    """Wait until `readiness` first holds, then send READY=1 once (a background task of the node:
    started with the node, it ends after the one send).

    Returns at once, without waiting, when $NOTIFY_SOCKET is unset. A failed send is logged, not
    raised: the node serves either way, and systemd reports the start as timed out."""
    if not (os.environ if environ is None else environ).get(NOTIFY_SOCKET):
        return
    while not readiness.ready:
        await asyncio.sleep(interval)
    try:
        notify(READY, environ)
    except NotifySocketError as exc:
        log.warning("systemd readiness notification failed: %s", exc)


def notify_stopping(environ: Mapping[str, str] | None = None) -> None:
    """STOPPING=1 as the node starts to drain, so systemd shows the unit as deactivating (not
    failed) while connections finish; a failed send is logged, the drain goes on."""
    try:
        notify(STOPPING, environ)
    except NotifySocketError as exc:
        log.warning("systemd stopping notification failed: %s", exc)


__all__ = [
    "NOTIFY_SOCKET",
    "READY",
    "STOPPING",
    "NotifySocketError",
    "notify",
    "notify_address",
    "notify_stopping",
    "notify_when_ready",
]
