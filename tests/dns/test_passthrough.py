"""Forwarded answers pass through as bytes (zt/dns/raw.py): the upstream's records as they came,
under the client's id and question and zt's own flags and OPT; malformed upstream answers are
no answer at all; plain queries are read without dnspython, the same as with it."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.dns.test_core import accepted, core_for, forward_of, query, upstream_answer
from zt.dns.core import Reply
from zt.dns.wire import Query, Transport, _of_message, parse_query
from zt.state.snapshot import Snapshot


def _lines(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(line.lower() for r in section for line in r.to_text().splitlines())


def test_the_upstreams_records_pass_with_the_clients_header_question_and_our_opt(
    snapshot: Snapshot,
) -> None:
    core = core_for(snapshot)
    q = query("WwW.ExAmPle.org.", use_edns=0, payload=4096)  # mixed case (DNS 0x20)
    forward = forward_of(core, q, 0.0)
    reply = upstream_answer(forward, ttl=300)
    reply.flags |= dns.flags.AA | dns.flags.AD  # neither reaches this client (RFC 6840 §5.8)
    reply.use_edns(
        0, 0, 4096, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")]
    )  # a cookie
    reply.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "NS", "ns.example.org."))
    wire = reply.to_wire()
    answer = forward.accept(wire)
    assert answer is not None
    out = core.forwarded(forward, answer, 0.0).wire
    got = dns.message.from_wire(out)
    assert got.id == q.id and got.question[0].name.to_text() == "WwW.ExAmPle.org."
    assert not got.flags & (dns.flags.AA | dns.flags.AD) and got.flags & dns.flags.RA
    assert (got.edns, got.payload, got.options) == (0, 1232, ())  # ours, not the upstream's
    for mine, theirs in ((got.answer, reply.answer), (got.authority, reply.authority)):
        # names compare case-insensitively: compressed ones take the client's question's case
        assert _lines(mine) == _lines(theirs)
    # the records are the upstream's bytes (its compression pointers included)
    records = wire[12 + len(forward.question) :]
    assert records[: len(records) - 23] in out  # all but its OPT: 11 bytes, a 12-byte cookie


def test_ad_reaches_a_client_that_asked_with_do(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    q = query("signed.example.org.", use_edns=0, want_dnssec=True)
    forward = forward_of(core, q, 0.0)
    reply = upstream_answer(forward)
    reply.flags |= dns.flags.AD
    got = dns.message.from_wire(core.forwarded(forward, accepted(forward, reply), 0.0).wire)
    assert got.flags & dns.flags.AD and got.ednsflags & dns.flags.DO


def test_cached_ttls_count_down_and_a_ttl_with_the_top_bit_is_zero(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    q = query("ttl.example.org.")
    forward = forward_of(core, q, 0.0)
    reply = upstream_answer(forward, ttl=100)
    reply.additional.append(dns.rrset.from_text("ns.example.org.", 7, "IN", "A", "192.0.2.53"))
    wire = bytearray(reply.to_wire())
    ttl_at = wire.rfind(bytes([192, 0, 2, 53])) - 6  # TTL, RDLENGTH, then the address
    struct.pack_into("!I", wire, ttl_at, 0x80000007)  # RFC 2181 §8: taken as zero
    answer = forward.accept(bytes(wire))
    assert answer is not None
    core.forwarded(forward, answer, 0.0)
    later = core.handle(q.to_wire(), Transport.UDP, 40.5)
    got = dns.message.from_wire(later.wire)  # type: ignore[union-attr]
    assert [r.ttl for r in got.answer] == [60] and [r.ttl for r in got.additional] == [0]


def _malformed(wire: bytes) -> list[bytes]:
    """Variants of a good answer (header, question `www.example.org A IN`, one A record whose
    owner is a pointer to the question) that no parser may accept."""
    q_end = 12 + 17 + 4
    record = wire[q_end:]
    header = bytearray(wire[:12])
    more = bytearray(header)
    more[7] = 2  # ANCOUNT 2, one record
    in_additional = bytearray(header)
    in_additional[7], in_additional[11] = 0, 1
    return [
        wire + b"\x00",  # trailing bytes
        bytes(more) + wire[12:],  # a count promising more
        wire[:-1],  # rdata cut short
        wire[:q_end] + b"\xc0\x30" + record[2:],  # a pointer forward
        wire[:q_end] + b"\xc0\x21" + record[2:],  # a pointer to itself (a loop)
        wire[:q_end] + b"\x80\x00" + record[2:],  # a retired label type
        wire[:q_end] + b"\x00\x00\x29" + record[3:],  # an OPT in the answer section
        bytes(in_additional) + wire[12:] + b"\x00\x00\x29\x04\xd0" + bytes(6),  # after the OPT
    ]


def test_malformed_upstream_answers_are_no_answer(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    forward = forward_of(core, query("www.example.org."), 0.0)
    good = upstream_answer(forward)
    good.answer[0] = dns.rrset.from_text("www.example.org.", 60, "IN", "A", "192.0.2.1")
    wire = good.to_wire()
    assert forward.accept(wire) is not None
    for bad in _malformed(wire):
        assert forward.accept(bad) is None, bad


@pytest.mark.parametrize(
    "q",
    [
        query("plain.example.org."),
        query("Plain.example.org.", "AAAA", use_edns=0, payload=1400),
        query("plain.example.org.", "TXT", use_edns=0, want_dnssec=True),
        query("x.", "A", use_edns=0, payload=100),  # below 512: taken as 512
    ],
)
@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_plain_queries_read_from_bytes_equal_dnspythons_reading(
    q: dns.message.Message, transport: Transport
) -> None:
    wire = q.to_wire()
    fast = parse_query(wire, transport)
    assert isinstance(fast, Query) and fast.parsed is None  # read without dnspython
    assert fast == _of_message(dns.message.from_wire(wire), wire, transport)
    assert fast.message.id == fast.qid  # dnspython's reading on demand


def test_an_unknown_client_is_servfail_on_the_plain_path_too(snapshot: Snapshot) -> None:
    core = core_for(snapshot, client="default/ghost")
    command = core.handle(query("www.example.org.").to_wire(), Transport.UDP, 0.0)
    assert isinstance(command, Reply) and command.result == "unknown_client"
    assert dns.message.from_wire(command.wire).rcode() == dns.rcode.SERVFAIL
