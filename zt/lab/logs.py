"""Reading node daemons' access logs (text `key=value` or JSON lines) back as records.

The record format is the daemon's contract (zt/telemetry/connections.py, ztunnel's fields):
`connection complete ts=... src.addr=... src.identity=... dst.addr=... dst.hbone_addr=...
direction=inbound|outbound bytes_sent=N bytes_recv=N duration=Nms protocol=... response_flags=...
policy=...`; empty fields are left out; values with spaces, quotes or `=` are JSON-quoted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MARK = "connection complete"
_PAIR = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


@dataclass(frozen=True)
class AccessRecord:
    fields: dict[str, str]

    def get(self, key: str) -> str:
        return self.fields.get(key, "")

    @property
    def direction(self) -> str:
        return self.get("direction")

    @property
    def flags(self) -> str:
        return self.get("response_flags") or "-"

    def count(self, key: str) -> int:
        value = self.get(key)
        return int(value) if value.isdigit() else 0


def parse_line(line: str) -> AccessRecord | None:
    """One access record, or None for any other log line."""
    start = line.find("{")
    if start >= 0 and line.rstrip().endswith("}"):
        try:
            obj = json.loads(line[start:])
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            if obj.get("msg") != MARK:
                return None
            return AccessRecord({str(k): str(v) for k, v in obj.items() if k != "msg"})
    at = line.find(MARK)
    if at < 0:
        return None
    fields = {}
    for key, raw in _PAIR.findall(line[at + len(MARK) :]):
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
    return AccessRecord(fields)


def records(path: Path, offset: int = 0) -> list[AccessRecord]:
    """Access records written to path after byte offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [r for line in text.splitlines() if (r := parse_line(line)) is not None]


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def wait_for(
    path: Path,
    offset: int,
    match: Callable[[AccessRecord], bool],
    timeout: float = 5.0,
) -> AccessRecord | None:
    """The first record after offset that matches, polling until timeout (a record is written
    when the connection closes on the daemon's side, a moment after the app saw EOF)."""
    deadline = time.monotonic() + timeout
    while True:
        found = next((r for r in records(path, offset) if match(r)), None)
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
