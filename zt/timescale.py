"""Deadlines that stretch on slow machines.

Waits for something that *will* happen (a daemon becoming ready, a helper process answering) use
`scaled()`, so a run under software emulation (the VM lab sets ZT_TIME_SCALE) waits longer instead of
failing. Protocol timers (PING, dial timeouts) are not scaled: they are behaviour, not patience.
"""

from __future__ import annotations

import os


def factor() -> float:
    try:
        return max(1.0, float(os.environ.get("ZT_TIME_SCALE", "1")))
    except ValueError:
        return 1.0


def scaled(seconds: float) -> float:
    return seconds * factor()
