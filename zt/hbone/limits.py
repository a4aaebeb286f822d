"""Per-connection limits against an authenticated but abusive HTTP/2 peer, as pure logic.

`FrameGuard` looks at each frame's 9-byte header (RFC 9113 §4.1: "Length (24), Type (8), Flags (8),
Reserved (1), Stream Identifier (31)") before the frame's body is buffered or parsed, so refusing a
frame costs nine bytes of work, not the frame:

- a frame longer than our SETTINGS_MAX_FRAME_SIZE: RFC 9113 §4.2, "An endpoint MUST send an error
  code of FRAME_SIZE_ERROR if a frame exceeds the size defined in SETTINGS_MAX_FRAME_SIZE";
- a header block (HEADERS/PUSH_PROMISE + CONTINUATION) larger than the cap, before any HPACK decoding
  (the 2024 CONTINUATION floods, e.g. CVE-2024-27316). RFC 9113 §10.5.1: "The field block MUST be
  processed to ensure a consistent connection state, unless the connection is closed", so refusing
  one without decoding it ends the connection;
- budgets for frames that make us reply or do nothing useful (PING, SETTINGS, PRIORITY) and for
  SETTINGS changes alone.

Time is a parameter (`now`): the owner sets it before feeding bytes. Every refusal raises an h2
`ProtocolError` subclass, so h2 itself queues the GOAWAY with the right code and the HBONE core
translates it once (connection.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from h2.exceptions import DenialOfServiceError, FrameTooLargeError

# Names of the limits, as counters and the `limit` label of zt_hbone_limit_exceeded_total.
FRAME_SIZE = "frame_size"
HEADER_BLOCK = "header_block"
CONTROL_FRAMES = "control_frames"
SETTINGS_RATE = "settings_rate"
RAPID_RESET = "rapid_reset"
PENDING_CONNECTS = "pending_connects"
PREFACE_TIMEOUT = "preface_timeout"
WRITE_BUFFER = "write_buffer"  # the adapter stopped reading: the peer does not read our replies

_HEADERS = 0x1
_PRIORITY = 0x2
_SETTINGS = 0x4
_PUSH_PROMISE = 0x5
_PING = 0x6
_CONTINUATION = 0x9
_ACK = 0x1  # SETTINGS and PING
_END_HEADERS = 0x4


@dataclass(slots=True)
class RateBudget:
    """A token bucket: `burst` events at once, refilled at `rate` per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def per_second(cls, rate: float, now: float) -> RateBudget:
        """One second's worth of events at once, then `rate` per second."""
        return cls(rate, rate, rate, now)

    def take(self, now: float) -> bool:
        """Spend one token; False when the budget is exhausted (the event is over the limit)."""
        elapsed = max(0.0, now - self.stamp)
        self.stamp = max(self.stamp, now)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class LimitExceeded(DenialOfServiceError):
    """The peer went past a limit; h2 answers GOAWAY(ENHANCE_YOUR_CALM) (RFC 9113 §7: "The
    endpoint detected that its peer is exhibiting a behavior that might be generating excessive
    load")."""

    def __init__(self, limit: str, message: str) -> None:
        self.limit = limit
        super().__init__(message)


class FrameTooLong(FrameTooLargeError):
    """A frame header declared more than our SETTINGS_MAX_FRAME_SIZE (GOAWAY(FRAME_SIZE_ERROR))."""

    limit = FRAME_SIZE


class FrameGuard:
    """Frame-level limits of one connection (see the module docstring). `hits` counts refusals by
    limit name; the connection shares it."""

    def __init__(
        self,
        *,
        max_header_block: int,
        control_frames_per_second: float,
        settings_per_second: float,
        now: float,
        hits: Counter[str] | None = None,
    ) -> None:
        self.max_header_block = max_header_block
        self.now = now
        self.hits: Counter[str] = hits if hits is not None else Counter()
        self._control = RateBudget.per_second(control_frames_per_second, now)
        self._settings = RateBudget.per_second(settings_per_second, now)
        self._block: int | None = None  # bytes of the header block being received, if any
        # Frames the buffer may still hand to h2 in this receive_data call (see `spend_frame`).
        self.frames_left = 0

    def spend_frame(self) -> bool:
        """One more frame for h2 in this call? False: stop here, the rest stays buffered."""
        if self.frames_left <= 0:
            return False
        self.frames_left -= 1
        return True

    def inspect(self, kind: int, length: int, max_frame_size: int) -> None:
        """A frame header was read, its body not yet: refuse it now if it can only be refused
        later. Idempotent (may run several times while the body trickles in)."""
        if length > max_frame_size:
            self.hits[FRAME_SIZE] += 1
            raise FrameTooLong(
                f"frame length: got {length}, expected at most {max_frame_size} "
                "(our SETTINGS_MAX_FRAME_SIZE)"
            )
        if kind in (_HEADERS, _PUSH_PROMISE):
            block = length
        elif kind == _CONTINUATION and self._block is not None:
            block = self._block + length
        else:
            return
        if block > self.max_header_block:
            self.hits[HEADER_BLOCK] += 1
            raise LimitExceeded(
                HEADER_BLOCK,
                f"header block: got {block} bytes so far, expected at most "
                f"{self.max_header_block} (HEADERS + CONTINUATION, before decoding)",
            )

    def consumed(self, kind: int, flags: int, length: int) -> None:
        """The whole frame was read and goes to h2 next: account for it."""
        if kind in (_HEADERS, _PUSH_PROMISE):
            self._block = None if flags & _END_HEADERS else length
        elif kind == _CONTINUATION:
            if self._block is not None:
                self._block = None if flags & _END_HEADERS else self._block + length
        elif kind == _SETTINGS and not flags & _ACK:
            self._spend(self._settings, SETTINGS_RATE, "SETTINGS frames")
            self._spend(self._control, CONTROL_FRAMES, "control frames")
        elif (kind == _PING and not flags & _ACK) or kind == _PRIORITY:
            self._spend(self._control, CONTROL_FRAMES, "control frames")

    def _spend(self, budget: RateBudget, limit: str, what: str) -> None:
        if not budget.take(self.now):
            self.hits[limit] += 1
            raise LimitExceeded(
                limit, f"{what}: more than {budget.rate:g} per second, expected fewer"
            )
