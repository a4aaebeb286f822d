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
as bytes (zt/dns/raw.py) with the offsets of their TTLs: serving it rewrites those, no more. The
cache holds at most `max_entries`, dropping the least recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from zt.dns.raw import AD, TC, Answer, aged
from zt.state.names import Labels

Key = tuple[Labels, int, int, bool]  # (qname, qtype, qclass, DO bit)
NOERROR, NXDOMAIN = 0, 3


@dataclass(frozen=True)
class CacheSettings:
    max_entries: int = 10_000
    max_ttl: int = 86_400
    max_negative_ttl: int = 10_800


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

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Key, answer: Answer, now: float) -> bool:
        """Keep an upstream answer if its rcode and TTLs allow; True if kept."""
        ttl = cache_ttl(answer, self.settings)
        if ttl <= 0:
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
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.settings.max_entries:
            self._entries.popitem(last=False)
        return True

    def get(self, key: Key, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expired(now):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry
