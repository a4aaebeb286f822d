"""A pod's DNS query budget: a token bucket, and the log line that says it ran dry (no I/O; time
is a parameter).

Why these figures (docs/dns.md "Limits per pod"): every query is served on the node's one event
loop, which also carries every pod's traffic. A query costs ~30 us answered from the memo, ~200 us
parsed and answered, ~500 us forwarded, ~0.6 ms at worst once `zt.dns.wire.gate` let it through.
400 queries/s sustained is then at most ~20% of the loop for the worst pod (AWS's VPC resolver
allows 1,024 packets/s per network interface, a whole instance's worth of pods). A lookup through
a ClusterFirst pod's search list costs up to 8-10 queries (A and AAAA per suffix), so 400/s is 40+
new names a second; the burst of 800 lets a starting pod resolve its whole configuration at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    rate: float = 400.0  # queries per second, sustained
    burst: float = 800.0  # queries at once after a quiet while


class TokenBucket:
    """`burst` tokens at most, `rate` more a second; a query takes one."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        if limit.rate <= 0 or limit.burst < 1:
            raise ValueError(f"rate limit: got {limit}, expected rate > 0 and burst >= 1")
        self.limit = limit
        self._tokens = limit.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)  # a clock never runs back, but be safe
        self._tokens = min(self.limit.burst, self._tokens + elapsed * self.limit.rate)
        self._stamp = max(self._stamp, now)

    def take(self, now: float) -> bool:
        """One token now, or False (none left: the UDP query is dropped)."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def reserve(self, now: float) -> float:
        """One token, maybe owed: the seconds to wait before using it (0: at once). The debt is
        bounded by the callers: one reservation at a time per TCP connection, before it reads on."""
        self._refill(now)
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.limit.rate


@dataclass
class LimitLog:
    """Counts what the limit did and says so at most once per `every` seconds: a flood must not
    turn into a flood of log lines."""

    every: float = 10.0
    dropped: int = 0
    delayed: int = 0
    _next: float = float("-inf")

    def note(self, now: float, *, dropped: int = 0, delayed: int = 0) -> str | None:
        """The line to log now, if one is due."""
        self.dropped += dropped
        self.delayed += delayed
        if now < self._next:
            return None
        self._next = now + self.every
        line = f"{self.dropped} UDP queries dropped, {self.delayed} TCP queries delayed"
        self.dropped = self.delayed = 0
        return line
