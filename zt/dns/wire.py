"""DNS messages in and out, on dnspython: parse a query, build and size an answer.

dnspython's exceptions stop here: `parse_query` turns every malformed packet into a `Rejected`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset

# RFC 1035 §4.2.1: "Messages carried by UDP are restricted to 512 bytes"; RFC 6891 §6.2.5:
# "Values lower than 512 MUST be treated as equal to 512".
CLASSIC_UDP = 512
# RFC 7766 §8: a TCP message is preceded by a two-byte length: 65535 bytes at most.
MAX_MESSAGE = 65535
# What zt advertises as its own EDNS UDP size, to clients and upstreams: DNS flag day 2020's
# 1232 bytes, which fits an IPv6 minimum MTU of 1280 without fragmentation.
OUR_PAYLOAD = 1232
HEADER = struct.Struct("!HHHHHH")  # RFC 1035 §4.1.1: id, flags, qd/an/ns/ar counts
QR = 0x8000
OPCODE_MASK = 0x7800
RD = 0x0100
DO = 0x8000  # RFC 3225 §3, in the OPT's flags (plain ints: dnspython's flag enums cost ~3 us)
OPT = 41
# The largest query parsed: the size zt's own OPT announces as the most it takes (a legitimate
# query is its header, a name of at most 255 bytes, 4 bytes of type and class and an OPT: under
# ~400 bytes even with RFC 8467's padding to a multiple of 128). dnspython's cost grows with the
# records a message holds: a 64 KiB one of ~4,000 records takes ~0.4 s of the node's event loop.
MAX_QUERY = OUR_PAYLOAD
# EDNS options one query may carry (cookie, padding, client subnet, keepalive, NSID, ... are
# a handful); each costs dnspython ~12 us: 1,000 empty ones in 4 KiB took ~12 ms.
MAX_OPTIONS = 8
# the query types counted by name in metrics; every other is "other" (bounded label values)
NAMED_TYPES = frozenset(
    {"A", "AAAA", "CNAME", "MX", "TXT", "SRV", "PTR", "NS", "SOA", "HTTPS", "SVCB", "ANY", "CAA"}
)


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class QName:
    """A query name for the access log, written out (escaped as dnspython writes names) only
    when a line is (~5 us per query otherwise spent on a debug line that is off)."""

    labels: tuple[bytes, ...]

    def __str__(self) -> str:
        return dns.name.Name((*self.labels, b"")).to_text()


@dataclass(frozen=True)
class Query:
    """A well-formed query with one question: the header and question fields every answer needs,
    read from the bytes; the dnspython message (`message`) only for answers built with it."""

    wire: bytes = field(repr=False)
    qid: int
    flags: int
    labels: tuple[bytes, ...]  # the question name as sent, without the root
    qtype: int
    qclass: int
    edns: int  # the OPT's EDNS version, -1 without an OPT
    ednsflags: int
    limit: int  # the largest answer this client takes over its transport
    parsed: dns.message.Message | None = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> dns.message.Message:
        """dnspython's message (parsed once, on first use: most forwarded and cached answers
        never need it)."""
        if self.parsed is None:
            object.__setattr__(self, "parsed", dns.message.from_wire(self.wire))
        assert self.parsed is not None
        return self.parsed

    @property
    def question(self) -> dns.rrset.RRset:
        return self.message.question[0]

    @property
    def qname(self) -> QName:
        return QName(self.labels)

    @property
    def type_label(self) -> str:
        return type_label(self.qtype)

    @property
    def dnssec_ok(self) -> bool:
        return bool(self.ednsflags & DO)


@dataclass(frozen=True)
class Rejected:
    """A packet that is no query we answer: `reply` (FORMERR, NOTIMP, BADVERS) or None (drop)."""

    reason: str
    reply: bytes | None
    qtype: str = "none"


def type_label(qtype: int) -> str:
    text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    return text if text in NAMED_TYPES else "other"


def client_limit(edns: int, payload: int, transport: Transport) -> int:
    """RFC 6891 §6.2.3/§6.2.5: a UDP answer may be as large as the requester's payload size (512
    if it sent no OPT or a smaller one); over TCP, the framing's limit."""
    if transport is Transport.TCP:
        return MAX_MESSAGE
    if edns < 0:
        return CLASSIC_UDP
    return max(CLASSIC_UDP, min(payload, MAX_MESSAGE))


def _plain_query(wire: bytes, transport: Transport) -> Query | None:
    """The common query read straight from the bytes (~5 us; dnspython takes ~60 us): opcode
    QUERY, one question with an uncompressed name, no answer or authority records, and at most
    an OPT of version 0 without options as the only additional record. Anything else: None,
    and dnspython reads it (and finds what is wrong)."""
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    if flags & OPCODE_MASK or qd != 1 or an or ns or ar > 1:
        return None
    labels: list[bytes] = []
    i = HEADER.size
    while True:
        if i >= len(wire):
            return None
        size = wire[i]
        if size == 0:
            break
        if size > 63 or i + 1 + size > len(wire):  # a pointer, a bad label type, cut short
            return None
        labels.append(wire[i + 1 : i + 1 + size])
        i += 1 + size
    if i - HEADER.size + 1 > 255:  # RFC 1035 §2.3.4: names are 255 octets or less
        return None
    i += 1
    if i + 4 > len(wire):
        return None
    qtype, qclass = struct.unpack_from("!HH", wire, i)
    i += 4
    edns, ednsflags, payload = -1, 0, 0
    if ar:
        # RFC 6891 §6.1.2: root owner, TYPE 41, CLASS the UDP size, TTL: extended rcode, version,
        # flags; RDLENGTH 0 (no options)
        if wire[i : i + 3] != b"\x00\x00\x29" or len(wire) != i + 11:
            return None
        payload, ext_rcode, edns, ednsflags, rdlength = struct.unpack_from("!HBBHH", wire, i + 3)
        if ext_rcode or edns or rdlength:
            return None
        i += 11
    if i != len(wire):
        return None
    limit = client_limit(edns, payload, transport)
    return Query(wire, qid, flags, tuple(labels), qtype, qclass, edns, ednsflags, limit)


def _of_message(message: dns.message.Message, wire: bytes, transport: Transport) -> Query:
    question = message.question[0]
    return Query(
        wire,
        message.id,
        message.flags,
        tuple(question.name.labels[:-1]),
        int(question.rdtype),
        int(question.rdclass),
        message.edns,
        message.ednsflags,
        client_limit(message.edns, message.payload, transport),
        message,
    )


def _error_header(qid: int, flags: int, rcode: int) -> bytes:
    """A bare answer: the query's id, opcode and RD, QR set, no records (RFC 1035 §4.1.1)."""
    out_flags = QR | (flags & (OPCODE_MASK | RD)) | dns.flags.RA | rcode
    return HEADER.pack(qid, out_flags, 0, 0, 0, 0)


def parse_query(wire: bytes, transport: Transport) -> Query | Rejected:
    """A query, or why not. RFC 1035 §4.1.1 RCODE 1, "Format error - The name server was unable
    to interpret the query": sent whenever the 12-byte header could be read; shorter packets
    and responses are dropped (answering a response could start an endless exchange between
    two servers doing the same). `gate` looks at the header first, so dnspython only ever
    parses a message of one question and at most an OPT, of at most MAX_QUERY bytes."""
    rejected = gate(wire)
    if rejected is not None:
        return rejected
    qid, flags, *_ = HEADER.unpack_from(wire)
    plain = _plain_query(wire, transport)  # the gate dropped responses already
    if plain is not None:
        return plain
    try:
        message = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        # FormError, BadPointer (compression loops: RFC 1035 §4.1.4 pointers must point back),
        # TrailingJunk, ShortHeader, bad rdata; a value error from a label (RFC 1035 §2.3.4)
        return Rejected("malformed", _error_header(qid, flags, dns.rcode.FORMERR))
    # opcode and question count were checked by `gate` (NOTIMP, FORMERR) before any parse
    query = _of_message(message, wire, transport)
    if message.edns > 0:
        # RFC 6891 §6.1.3: "If a responder does not implement the VERSION level of the request,
        # then it MUST respond with RCODE=BADVERS" (with an OPT of the version it does speak)
        response = respond(query, authoritative=False)
        response.set_rcode(dns.rcode.BADVERS)
        return Rejected("bad_edns_version", render(response, query.limit), query.type_label)
    return query


def gate(wire: bytes) -> Rejected | None:
    """Why a message is no query worth parsing, from its bytes alone (a few microseconds; None:
    parse it). RFC 1035 §4.1.1: a standard query has QDCOUNT 1 (RFC 9619 §3: any other count is
    malformed) and nothing in the answer and authority sections; its additional section holds
    at most the OPT (RFC 6891 §6.1.1). A TSIG or SIG(0) record would make two; zt holds no keys
    to check them, so signed queries are refused as dnspython would (no keyring)."""
    if len(wire) < HEADER.size:
        return Rejected("short", None)
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    if flags & QR:
        return Rejected("response", None)
    if flags & OPCODE_MASK:  # QUERY is opcode 0
        # RFC 1035 §4.1.1 RCODE 4: "The name server does not support the requested kind of query"
        return Rejected("not_implemented", _error_header(qid, flags, dns.rcode.NOTIMP))
    formerr = _error_header(qid, flags, dns.rcode.FORMERR)
    if len(wire) > MAX_QUERY:
        return Rejected("too_large", formerr)
    if qdcount != 1:
        return Rejected("question_count", formerr)
    if ancount or nscount or arcount > 1:
        return Rejected("record_count", formerr)
    if arcount and not _one_small_opt(wire):
        return Rejected("additional", formerr)
    return None


def _one_small_opt(wire: bytes) -> bool:
    """Whether the additional record after the one question is an OPT of at most MAX_OPTIONS
    options; a message that ends early says yes (dnspython then finds it malformed). At most
    MAX_QUERY / 2 labels and MAX_OPTIONS + 1 options are walked."""
    i = HEADER.size
    while i < len(wire) and 0 < wire[i] < 0x40:  # RFC 1035 §4.1.4: a label, its length first
        i += wire[i] + 1
    i += 2 if i < len(wire) and wire[i] >= 0xC0 else 1  # a pointer or the root label ends it
    i += 4  # QTYPE, QCLASS
    # RFC 6891 §6.1.2: NAME "MUST be 0 (root domain)", then TYPE, CLASS, TTL and RDLEN
    if len(wire) < i + 11:
        return True
    if wire[i] != 0 or struct.unpack_from("!H", wire, i + 1)[0] != OPT:
        return False
    i += 11
    options = 0
    while i + 4 <= len(wire):  # RFC 6891 §6.1.2: OPTION-CODE, OPTION-LENGTH, OPTION-DATA
        options += 1
        if options > MAX_OPTIONS:
            return False
        i += 4 + struct.unpack_from("!H", wire, i + 2)[0]
    return True


def respond(query: Query, *, authoritative: bool) -> dns.message.Message:
    """An empty answer to `query`: its id, question, RD and CD; RA set; an OPT of ours if the
    client sent one, with its DO bit (RFC 3225 §3: "the DO bit of the query MUST be copied in
    the response")."""
    response = dns.message.make_response(
        query.message, recursion_available=True, our_payload=OUR_PAYLOAD
    )
    if authoritative:
        response.flags |= dns.flags.AA
    if query.edns >= 0 and query.dnssec_ok:
        response.use_edns(0, dns.flags.DO, OUR_PAYLOAD)
    return response


def render(response: dns.message.Message, limit: int) -> bytes:
    """The answer as bytes of at most `limit`. One that does not fit goes out as its header,
    question and OPT with TC set (RFC 2181 §9: the client then asks again over TCP; RFC 1035
    §4.2.1 "longer messages are truncated and the TC bit is set")."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)
