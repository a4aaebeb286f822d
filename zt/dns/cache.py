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
negative answers), and served decremented by the entry's age. The cache holds at most
`max_entries`, dropping the least recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from zt.state.names import Labels

Key = tuple[Labels, int, int, bool]  # (qname, qtype, qclass, DO bit)
Section = tuple[dns.rrset.RRset, ...]


@dataclass(frozen=True)
class CacheSettings:
    max_entries: int = 10_000
    max_ttl: int = 86_400
    max_negative_ttl: int = 10_800


@dataclass(frozen=True)
class Entry:
    rcode: int
    authentic: bool  # the upstream's AD bit
    answer: Section
    authority: Section
    additional: Section
    stored: float
    ttl: int

    def expired(self, now: float) -> bool:
        return now - self.stored >= self.ttl


def _min_ttl(section: Section) -> int:
    return min(r.ttl for r in section)


def cache_ttl(message: dns.message.Message, settings: CacheSettings) -> int:
    """How long an upstream answer may be kept (0: not at all)."""
    rcode = message.rcode()
    if message.flags & dns.flags.TC or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return 0
    if rcode == dns.rcode.NOERROR and message.answer:
        return min(_min_ttl(tuple(message.answer)), settings.max_ttl)
    soas = [r for r in message.authority if r.rdtype == dns.rdatatype.SOA]
    if not soas:
        return 0
    soa = soas[0]
    minimum: int = soa[0].minimum
    return min(soa.ttl, minimum, settings.max_negative_ttl)


def _with_ttl(rrset: dns.rrset.RRset, ttl: int) -> dns.rrset.RRset:
    copy = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
    for rdata in rrset:
        copy.add(rdata, ttl)
    return copy


def _capped(section: list[dns.rrset.RRset], ttl: int) -> Section:
    return tuple(r if r.ttl <= ttl else _with_ttl(r, ttl) for r in section)


def _aged(section: Section, age: int) -> list[dns.rrset.RRset]:
    return [_with_ttl(r, max(0, r.ttl - age)) for r in section]


class Cache:
    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Key, message: dns.message.Message, now: float) -> bool:
        """Keep an upstream answer if its rcode and TTLs allow; True if kept."""
        ttl = cache_ttl(message, self.settings)
        if ttl <= 0:
            return False
        authentic = bool(message.flags & dns.flags.AD)
        # no record is served with a TTL beyond the entry's: a negative answer's SOA counts down
        # from the negative TTL (RFC 2308 §5)
        entry = Entry(
            message.rcode(),
            authentic,
            _capped(message.answer, ttl),
            _capped(message.authority, ttl),
            _capped(message.additional, ttl),
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

    def fill(self, entry: Entry, response: dns.message.Message, now: float) -> None:
        """Copy a kept answer into `response`, every TTL lowered by the entry's age (RFC 1035
        §7.4: a cached RR's TTL counts down)."""
        age = int(now - entry.stored)
        response.set_rcode(dns.rcode.Rcode.make(entry.rcode))
        if entry.authentic:
            response.flags |= dns.flags.AD
        response.answer = _aged(entry.answer, age)
        response.authority = _aged(entry.authority, age)
        response.additional = _aged(entry.additional, age)
