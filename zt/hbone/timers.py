"""Pure timer logic of a connection: PING keepalive, idle close, drain deadline, preface deadline.

docs/design.md §2: a PING goes out every 10 s; 20 s without its answer ends the connection; idle
client connections close after 5 minutes (a server never idles out); a GOAWAY drains, with a
deadline on shutdown. Times are plain floats from the caller's clock (sans-IO: the core never
reads a clock).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass


class TimerAction(enum.Enum):
    SEND_PING = "send_ping"
    PING_TIMEOUT = "ping_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    DRAIN_DEADLINE = "drain_deadline"
    PREFACE_TIMEOUT = "preface_timeout"


@dataclass(slots=True)
class Timers:
    """Deadlines of one connection; `due(now)` says which actions are due."""

    ping_interval: float | None
    ping_timeout: float
    idle_timeout: float | None
    last_ping: float
    idle_since: float | None
    ping_outstanding_since: float | None = None
    drain_deadline: float | None = None
    # Until the peer's first SETTINGS (RFC 9113 §3.4: the preface "MUST be followed by a SETTINGS
    # frame"): a TLS-authenticated peer that sends nothing must not hold the connection open.
    preface_deadline: float | None = None
    # The opaque data of the outstanding PING. RFC 9113 §6.7: the receiver "MUST send a PING frame
    # with the ACK flag set [...] with an identical frame payload": an unpredictable payload means
    # only a peer that read our PING can answer it (a counter can be guessed without reading).
    ping_payload: bytes | None = None
    random_bytes: Callable[[int], bytes] = os.urandom

    def next_deadline(self) -> float | None:
        candidates: list[float] = []
        if self.ping_outstanding_since is not None:
            candidates.append(self.ping_outstanding_since + self.ping_timeout)
        elif self.ping_interval is not None:
            candidates.append(self.last_ping + self.ping_interval)
        idle_at = self._idle_at()
        if idle_at is not None:
            candidates.append(idle_at)
        if self.drain_deadline is not None:
            candidates.append(self.drain_deadline)
        if self.preface_deadline is not None:
            candidates.append(self.preface_deadline)
        return min(candidates) if candidates else None

    def due(self, now: float) -> list[TimerAction]:
        """Actions due at `now`, fatal ones first (after one of those nothing else matters)."""
        actions: list[TimerAction] = []
        if self.drain_deadline is not None and now >= self.drain_deadline:
            actions.append(TimerAction.DRAIN_DEADLINE)
        if self.preface_deadline is not None and now >= self.preface_deadline:
            actions.append(TimerAction.PREFACE_TIMEOUT)
        if self.ping_outstanding_since is not None:
            if now >= self.ping_outstanding_since + self.ping_timeout:
                actions.append(TimerAction.PING_TIMEOUT)
        elif self.ping_interval is not None and now >= self.last_ping + self.ping_interval:
            actions.append(TimerAction.SEND_PING)
        idle_at = self._idle_at()
        if idle_at is not None and now >= idle_at:
            actions.append(TimerAction.IDLE_TIMEOUT)
        return actions

    def _idle_at(self) -> float | None:
        if self.idle_timeout is None or self.idle_since is None:
            return None
        return self.idle_since + self.idle_timeout

    def ping_sent(self, now: float) -> bytes:
        """Record a PING sent now; returns its 8-byte opaque data (random, see `ping_payload`)."""
        self.ping_payload = self.random_bytes(8)
        self.last_ping = now
        self.ping_outstanding_since = now
        return self.ping_payload

    def ping_acked(self, opaque: bytes, now: float) -> None:
        """A PING ACK: the peer is alive only when it echoes the outstanding PING's payload (the
        next PING is due one interval after the previous one was sent)."""
        del now  # kept for symmetry with the other transitions; the interval runs from the send
        if self.ping_payload is not None and opaque == self.ping_payload:
            self.ping_outstanding_since = None
            self.ping_payload = None

    def preface_received(self) -> None:
        self.preface_deadline = None

    def streams_changed(self, active: int, now: float) -> None:
        """Idle clock runs only while no stream is active."""
        if active:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = now
