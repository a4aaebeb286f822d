"""Rate-limited logging: an attacker must not be able to turn each bad frame into a log line.

`LogBudget` is pure (time is a parameter): for each key (a peer, a limit) it allows one line per
`interval` seconds and counts what it held back, so the next line that passes can say how many
were suppressed. `RateLimitedLogger` is the thin adapter that reads the clock and writes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_INTERVAL = 10.0  # seconds between two lines with the same key
MAX_KEYS = 1024  # keys remembered; the oldest is forgotten first (memory stays bounded)


class LogBudget:
    """Which lines may be written now. `admit(key, now)` returns None to hold the line back,
    else the number of lines suppressed for that key since the last one written."""

    def __init__(self, interval: float = DEFAULT_INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def admit(self, key: str, now: float) -> int | None:
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        suppressed = seen[1] if seen is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return suppressed


class RateLimitedLogger:
    """`log.warning(key, msg, *args)`: at most one line per key per interval, with a suffix
    saying how many similar lines were suppressed before it."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.budget = LogBudget(interval)
        self._clock = clock

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        suppressed = self.budget.admit(key, self._clock())
        if suppressed is None:
            return
        if suppressed:
            msg += f" ({suppressed} similar line(s) suppressed)"
        self.logger.log(level, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.INFO, key, msg, *args)
