"""Upstream answers kept for their TTL; `now` is always a parameter (seconds, any monotonic clock).

What is kept (RFC 2308, RFC 1035 §7.4):
- NOERROR with answers: for the smallest TTL of the answer section;
- NXDOMAIN, and NOERROR without answers (NODATA): for min(SOA TTL, SOA MINIMUM) of the SOA in the
  authority section (RFC 2308 §5: "the TTL of this record is set from the minimum of the MINIMUM
  field of the SOA record and the TTL of the SOA itself"); without an SOA not at all (§5:
  "Negative responses without SOA records SHOULD NOT be cached");
- nothing else (SERVFAIL, REFUSED, truncated answers), and no OPT: RFC 6891 §6.2.1, "The OPT
  record MUST NOT be cached".
TTLs are capped (`max_ttl`, `max_negative_ttl`: RFC 2308 §5 finds one to three hours work well for
negative answers), and served decremented by the entry's age. An entry is the upstream's records
as bytes (zt/dns/raw.py) with the offsets of their TTLs: serving it rewrites those, no more.

Memory is bounded per pod by bytes, not only entries: answers whose records exceed
`max_answer_bytes` are not kept (a 64 KiB TCP answer is rare and asked again), and the entries'
records plus `ENTRY_OVERHEAD` each stay under `max_bytes`, the least recently used dropped first.
Expired entries go when asked for, and in a sweep of the whole cache at most every
`sweep_interval` seconds, on a `put` (names nobody asks again do not wait for eviction).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from zt.dns.raw import AD, CD, RD, TC, Answer, aged
from zt.state.names import Labels

# (qname, qtype, qclass, DO bit, the query's RD and CD bits): each changes what an upstream
# answers, so answers to one never serve the other (CD=1: unvalidated data, RFC 4035 §3.2.2)
Key = tuple[Labels, int, int, bool, int]
KEY_FLAGS = RD | CD
NOERROR, NXDOMAIN = 0, 3
# Python's objects around one entry (the key's tuples and labels, the Entry, its slot): ~300
# measured for a short name; a little more, so the budget errs on the safe side
ENTRY_OVERHEAD = 400


@dataclass(frozen=True)
class CacheSettings:
    max_entries: int = 10_000
    max_bytes: int = 4 * 1024 * 1024  # per pod: records' bytes + ENTRY_OVERHEAD per entry
    max_answer_bytes: int = 4096  # records of one answer; larger ones are not kept
    max_ttl: int = 86_400
    max_negative_ttl: int = 10_800
    sweep_interval: float = 60.0


@dataclass(frozen=True)
class Entry:
    """An upstream answer's records as bytes (no OPT), every TTL capped to the entry's."""

    rcode: int
    authentic: bool  # the upstream's AD bit
    counts: tuple[int, int, int]
    records: bytes
    ttl_offsets: tuple[int, ...]
    stored: float
    ttl: int

    def expired(self, now: float) -> bool:
        return now - self.stored >= self.ttl

    @property
    def size(self) -> int:
        return len(self.records) + ENTRY_OVERHEAD

    def records_at(self, now: float) -> bytes:
        """The records with every TTL lowered by the entry's age (RFC 1035 §7.4)."""
        return aged(self.records, self.ttl_offsets, self.ttl, int(now - self.stored))


def cache_ttl(answer: Answer, settings: CacheSettings) -> int:
    """How long an upstream answer may be kept (0: not at all)."""
    scanned = answer.scanned
    rcode = scanned.rcode
    if scanned.flags & TC or rcode not in (NOERROR, NXDOMAIN):
        return 0
    if rcode == NOERROR and scanned.answer_ttl is not None:
        return min(scanned.answer_ttl, settings.max_ttl)
    if scanned.soa_ttl is None:
        return 0
    return min(scanned.soa_ttl, settings.max_negative_ttl)


class Cache:
    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self.bytes = 0  # of the entries held (Entry.size)
        self._next_sweep = -float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Key, answer: Answer, now: float) -> bool:
        """Keep an upstream answer if its rcode, TTLs and size allow; True if kept."""
        self._sweep(now)
        ttl = cache_ttl(answer, self.settings)
        if ttl <= 0 or len(answer.records) > self.settings.max_answer_bytes:
            return False
        scanned = answer.scanned
        # no record is served with a TTL beyond the entry's: a negative answer's SOA counts down
        # from the negative TTL (RFC 2308 §5)
        offsets = scanned.ttl_offsets
        entry = Entry(
            scanned.rcode,
            bool(scanned.flags & AD),
            scanned.counts,
            aged(answer.records, offsets, ttl, 0),
            offsets,
            now,
            ttl,
        )
        self._drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        limits = self.settings
        while len(self._entries) > limits.max_entries or self.bytes > limits.max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used
        return True

    def get(self, key: Key, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expired(now):
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def _sweep(self, now: float) -> None:
        """Drop every expired entry, at most once per `sweep_interval` (~1 us per entry)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.settings.sweep_interval
        for key in [k for k, e in self._entries.items() if e.expired(now)]:
            self._drop(key)
