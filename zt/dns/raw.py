"""Upstream answers as bytes: checked, measured and passed on without dnspython.

A forwarded answer is the upstream's records as they came (RFC 1035 §4.1), under a header and
question and OPT of zt's: parsing it into objects and rendering it again took ~300 us per query,
walking it ~10 us. `scan()` checks its structure (RFC 1035 §4.1.4 names; counts, lengths and
trailing bytes) and notes what zt needs: each record's TTL offset (the cache counts them down),
the smallest answer TTL, the negative-caching SOA, and where the upstream's OPT is (RFC 6891
§6.2.1: "The OPT record MUST NOT be cached"; zt answers with its own).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from zt.dns.wire import DO, OUR_PAYLOAD

HEADER = struct.Struct("!HHHHHH")
RR = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH after an owner name
TTL = struct.Struct("!I")
HEADER_SIZE = 12
OPT = 41
SOA = 6
QR, TC, RD, RA, AD, CD = 0x8000, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010


class Malformed(Exception):
    """Not a well-formed DNS message (never leaves this module's callers)."""


@dataclass(frozen=True)
class Scanned:
    """One upstream message, walked once."""

    flags: int
    question_end: int
    counts: tuple[int, int, int]  # answer, authority, additional records, the OPT not counted
    records_end: int  # where the records zt keeps end: the OPT, if last, is cut off there
    ttl_offsets: tuple[int, ...]  # of each kept record's TTL, from the question's end
    answer_ttl: int | None  # the smallest TTL of the answer section (None: no answers)
    soa_ttl: int | None  # min(TTL, MINIMUM) of the first SOA of the authority section

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def _skip_name(wire: bytes, i: int) -> int:
    """The offset after the name at `i`. RFC 1035 §4.1.4: a name is labels ending in a zero
    octet or a pointer; a pointer must point back (so no loops). 0x40 / 0x80 label types are
    unused (RFC 6891 §5 retired the extended label type)."""
    start = i
    while True:
        if i >= len(wire):
            raise Malformed("name cut short")
        length = wire[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:
            if i + 2 > len(wire) or ((length & 0x3F) << 8 | wire[i + 1]) >= start:
                raise Malformed("bad pointer")
            return i + 2
        if length & 0xC0:
            raise Malformed("bad label type")
        i += 1 + length


def scan(wire: bytes) -> Scanned:
    """Walk a message; raises Malformed. The OPT is cut off only as the last record (where every
    server puts it); an OPT elsewhere, or outside the additional section, is refused."""
    if len(wire) < HEADER_SIZE:
        raise Malformed("short header")
    _, flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    i = HEADER_SIZE
    for _ in range(qd):
        i = _skip_name(wire, i) + 4
    question_end = i
    ttls: list[int] = []
    answer_ttl: int | None = None
    soa_ttl: int | None = None
    opt_at: int | None = None
    for index in range(an + ns + ar):
        if opt_at is not None:
            raise Malformed("a record after the OPT")
        start = i
        i = _skip_name(wire, i)
        if i + RR.size > len(wire):
            raise Malformed("record cut short")
        rtype, _, ttl, size = RR.unpack_from(wire, i)
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 §8: "treated as if the entire value received was zero"
        end = i + RR.size + size
        if end > len(wire):
            raise Malformed("rdata cut short")
        if rtype == OPT:
            if index < an + ns:
                raise Malformed("an OPT outside the additional section")
            opt_at = start
        else:
            ttls.append(i + 4 - question_end)
            if index < an:
                answer_ttl = ttl if answer_ttl is None else min(answer_ttl, ttl)
            elif index < an + ns and rtype == SOA and soa_ttl is None and size >= 22:
                (minimum,) = struct.unpack_from("!I", wire, end - 4)  # the SOA's last field
                soa_ttl = min(ttl, minimum)
        i = end
    if i != len(wire):
        raise Malformed("trailing bytes")
    kept_ar = ar - (opt_at is not None)
    return Scanned(
        flags,
        question_end,
        (an, ns, kept_ar),
        opt_at if opt_at is not None else i,
        tuple(ttls),
        answer_ttl,
        soa_ttl,
    )


@dataclass(frozen=True)
class Answer:
    """An upstream's answer to one `Forward`: its bytes and their walk."""

    wire: bytes
    scanned: Scanned

    @property
    def records(self) -> bytes:
        """The answer, authority and additional records, without the OPT."""
        return self.wire[self.scanned.question_end : self.scanned.records_end]


def aged(records: bytes, offsets: tuple[int, ...], cap: int, age: int) -> bytes:
    """`records` with each TTL at `offsets` (from the start of `records`) set to
    max(0, min(TTL, cap) - age): RFC 1035 §7.4, a cached record's TTL counts down; RFC 2308 §5,
    no record outlives the entry holding it."""
    out = bytearray(records)
    for at in offsets:
        (ttl,) = TTL.unpack_from(out, at)
        ttl = 0 if ttl & 0x80000000 else min(ttl, cap)  # RFC 2181 §8, as in scan()
        TTL.pack_into(out, at, max(0, ttl - age))
    return bytes(out)


def our_opt(dnssec_ok: bool) -> bytes:
    """zt's OPT: root owner, our UDP size, version 0, the client's DO bit (RFC 3225 §3), no
    options (RFC 6891 §6.1.2)."""
    return b"\x00" + RR.pack(OPT, OUR_PAYLOAD, DO if dnssec_ok else 0, 0)


def message(
    qid: int,
    flags: int,
    question: bytes,
    *,
    counts: tuple[int, int, int],
    records: bytes,
    opt: bytes,
    limit: int,
) -> bytes:
    """Header, question, records, OPT; one that exceeds `limit` goes out as header, question and
    OPT with TC set (RFC 2181 §9, RFC 1035 §4.2.1), as `zt.dns.wire.render` does."""
    an, ns, ar = counts
    extra = 1 if opt else 0
    wire = HEADER.pack(qid, flags, 1, an, ns, ar + extra) + question + records + opt
    if len(wire) <= limit:
        return wire
    return HEADER.pack(qid, flags | TC, 1, 0, 0, extra) + question + opt
