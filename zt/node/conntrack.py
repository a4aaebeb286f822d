"""The node's live inbound connections, so a policy change can close the ones it now denies.

docs/design.md §4: A policy change re-checks live connections and closes the ones now denied. Each
tracked connection keeps the authorization question it was admitted with; `recheck` asks it again
against the new snapshot (a pure function) and the tracker closes whatever answers DENY.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from zt.state import Connection, Decision, Snapshot, authorize

log = logging.getLogger("zt.node.conntrack")


@dataclass(frozen=True)
class Revoked:
    key: int
    decision: Decision


def recheck(live: Iterable[tuple[int, Connection]], snapshot: Snapshot) -> list[Revoked]:
    """The tracked connections the snapshot now denies."""
    revoked = []
    for key, conn in live:
        decision = authorize(conn, snapshot)
        if not decision.allowed:
            revoked.append(Revoked(key, decision))
    return revoked


@dataclass
class _Entry:
    conn: Connection
    close: Callable[[Decision], None]
    pod: str


@dataclass
class ConnTracker:
    _entries: dict[int, _Entry] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    revoked_total: int = 0

    def add(self, pod: str, conn: Connection, close: Callable[[Decision], None]) -> int:
        key = next(self._ids)
        self._entries[key] = _Entry(conn, close, pod)
        return key

    def remove(self, key: int) -> None:
        self._entries.pop(key, None)

    def count(self, pod: str | None = None) -> int:
        return sum(1 for e in self._entries.values() if pod is None or e.pod == pod)

    def apply(self, snapshot: Snapshot) -> int:
        """Close every live connection the snapshot denies; return how many."""
        revoked = recheck(((k, e.conn) for k, e in self._entries.items()), snapshot)
        for r in revoked:
            entry = self._entries.pop(r.key, None)
            if entry is not None:
                log.info(
                    "closing %s -> %s: %s", entry.conn.src_ip, entry.conn.dst, r.decision.reason
                )
                entry.close(r.decision)
        self.revoked_total += len(revoked)
        return len(revoked)
