"""The sans-IO core: what a pod is answered for mesh names, names in mesh domains, everything
else (forwarded, cached with a fake clock), EDNS0 sizes, and every kind of bad input."""

from __future__ import annotations

import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.dns.conftest import CLIENT, MESH, addresses, mesh_snapshot, rrsets
from zt.dns.cache import Cache, CacheSettings
from zt.dns.core import DnsCore, Drop, Forward, Reply
from zt.dns.raw import Answer
from zt.dns.wire import Transport
from zt.state.snapshot import Snapshot

UDP, TCP = Transport.UDP, Transport.TCP


def core_for(snapshot: Snapshot, client: str = CLIENT, cache: Cache | None = None) -> DnsCore:
    cache = cache if cache is not None else Cache()  # an empty Cache is falsy (len 0)
    return DnsCore(lambda: snapshot, client, cache, rng=random.Random(7))


def query(name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


def answer(
    core: DnsCore, q: dns.message.Message, now: float = 0.0, transport: Transport = UDP
) -> dns.message.Message:
    command = core.handle(q.to_wire(), transport, now)
    assert isinstance(command, Reply), command
    return dns.message.from_wire(command.wire)


def result(core: DnsCore, q: dns.message.Message) -> str:
    command = core.handle(q.to_wire(), UDP, 0.0)
    assert isinstance(command, Reply), command
    return command.result


# -- mesh names ------------------------------------------------------------------------------------
def test_service_fqdn_answers_its_vips_on_the_clients_network_authoritatively(
    snapshot: Snapshot,
) -> None:
    core = core_for(snapshot)
    a = answer(core, query("reviews.default.svc.cluster.local."))
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA and a.flags & dns.flags.RA
    assert rrsets(a) == [("reviews.default.svc.cluster.local.", "A", 30, ["10.96.0.20"])]
    aaaa = answer(core, query("reviews.default.svc.cluster.local.", "AAAA"))
    assert addresses(aaaa) == {"fd00:96::20"}


@pytest.mark.parametrize(
    ("name", "vip"),
    [
        ("reviews.", "10.96.0.20"),  # <svc>: the client's namespace
        ("reviews.default.", "10.96.0.20"),  # <svc>.<ns>
        ("reviews.default.svc.", "10.96.0.20"),  # <svc>.<ns>.svc
        ("echo.", "10.96.0.31"),  # the client's namespace's echo, not shop's
        ("echo.shop.", "10.96.0.30"),
        ("ECHO.Shop.SVC.cluster.LOCAL.", "10.96.0.30"),  # RFC 4343: case-insensitive
        ("api.example.com.", "240.240.0.1"),  # a non-Kubernetes hostname with a VIP
        ("a.b.wild.example.", "240.240.0.2"),  # *.wild.example
    ],
)
def test_short_forms_resolve_as_ztunnel_expands_them(
    snapshot: Snapshot, name: str, vip: str
) -> None:
    a = answer(core_for(snapshot), query(name))
    assert rrsets(a) == [(name, "A", 30, [vip])]  # owner: the name as asked, case kept


def test_a_name_under_a_search_suffix_gets_a_cname_to_the_stripped_name(
    snapshot: Snapshot,
) -> None:
    """glibc with ndots:5 first asks `<name>.<first search suffix>`; ztunnel answers CNAME to
    the name it stripped, then the records, so one query resolves it."""
    core = core_for(snapshot)
    asked = "reviews.default.svc.cluster.local.default.svc.cluster.local."
    assert rrsets(answer(core, query(asked))) == [
        (asked, "CNAME", 30, ["reviews.default.svc.cluster.local."]),
        ("reviews.default.svc.cluster.local.", "A", 30, ["10.96.0.20"]),
    ]
    asked = "echo.shop.svc.cluster.local."  # the name itself: no CNAME
    assert [r[1] for r in rrsets(answer(core, query(asked)))] == ["A"]
    asked = "echo.shop.default.svc.cluster.local."  # <svc>.<ns> + the first search suffix
    assert rrsets(answer(core, query(asked))) == [
        (asked, "CNAME", 30, ["echo.shop."]),
        ("echo.shop.", "A", 30, ["10.96.0.30"]),
    ]


def test_headless_service_answers_one_address_per_healthy_endpoint(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    assert addresses(answer(core, query("db.default.svc.cluster.local."))) == {"10.1.0.7"}
    assert addresses(answer(core, query("db.default.svc.cluster.local.", "AAAA"))) == {"fd00:1::7"}


def test_workload_hostname_answers_the_workloads_addresses(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    assert addresses(answer(core, query("web-0.web.default.svc.cluster.local."))) == {"10.1.0.9"}
    assert addresses(answer(core, query("web-0.web.", "AAAA"))) == {"fd00:1::9"}


def test_vips_of_another_network_and_missing_families_give_an_empty_noerror() -> None:
    doc = {**MESH, "workloads": [{**MESH["workloads"][0], "network": "other"}]}
    core = core_for(mesh_snapshot(doc))
    a = answer(core, query("reviews.default.svc.cluster.local."))
    assert rrsets(a) == [("reviews.default.svc.cluster.local.", "A", 30, ["10.200.0.20"])]
    empty = answer(core, query("reviews.default.svc.cluster.local.", "AAAA"))
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == []  # not NXDOMAIN: it exists


def test_other_types_of_a_mesh_name_are_nodata(snapshot: Snapshot) -> None:
    a = answer(core_for(snapshot), query("reviews.default.svc.cluster.local.", "TXT"))
    assert (a.rcode(), a.answer, bool(a.flags & dns.flags.AA)) == (dns.rcode.NOERROR, [], True)


def test_many_vips_come_in_varying_order() -> None:
    vips = [f"10.96.1.{i}" for i in range(1, 9)]
    doc = {**MESH, "services": [{"name": "many", "hostname": "many.default.svc.cluster.local",
                                 "vips": vips}]}  # fmt: skip
    core = core_for(mesh_snapshot(doc))
    orders = {
        tuple(rd.to_text() for rd in answer(core, query("many.")).answer[0]) for _ in range(5)
    }
    assert len(orders) > 1 and all(sorted(o) == sorted(vips) for o in orders)


# -- names in the mesh's domains that the mesh does not hold ---------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.cluster.local.",
        "www.example.org.default.svc.cluster.local.",  # glibc's first search try for a real name
        "reviews.other.svc.cluster.local.",
        "x.web-0.web.default.svc.cluster.local.",
    ],
)
def test_unknown_names_in_a_mesh_domain_are_nxdomain_without_soa(
    snapshot: Snapshot, name: str
) -> None:
    core = core_for(snapshot)
    a = answer(core, query(name))
    assert a.rcode() == dns.rcode.NXDOMAIN and a.flags & dns.flags.AA
    assert (a.answer, a.authority) == ([], [])
    assert result(core, query(name, "MX")) == "nxdomain"


@pytest.mark.parametrize(
    "name", ["svc.cluster.local.", "default.svc.cluster.local.", "web.default.svc.cluster.local."]
)
def test_names_above_mesh_names_exist_and_are_nodata(snapshot: Snapshot, name: str) -> None:
    """RFC 8020: NXDOMAIN would tell a resolver nothing exists below them."""
    a = answer(core_for(snapshot), query(name))
    assert (a.rcode(), a.answer) == (dns.rcode.NOERROR, [])


@pytest.mark.parametrize(
    "name",
    ["www.example.org.", "reviews.default.", "novip.example.net.", "cluster.local.", "local."],
)
def test_names_outside_the_mesh_domains_are_forwarded(snapshot: Snapshot, name: str) -> None:
    doc = {**MESH, "services": [s for s in MESH["services"] if s["name"] != "reviews"]}
    core = core_for(mesh_snapshot(doc))
    assert isinstance(core.handle(query(name).to_wire(), UDP, 0.0), Forward)


def test_a_client_missing_from_the_snapshot_gets_servfail(snapshot: Snapshot) -> None:
    core = core_for(snapshot, client="default/gone")
    command = core.handle(query("reviews.").to_wire(), UDP, 0.0)
    assert isinstance(command, Reply) and command.result == "unknown_client"
    assert dns.message.from_wire(command.wire).rcode() == dns.rcode.SERVFAIL


def test_a_new_snapshot_is_used_for_the_next_query(snapshot: Snapshot) -> None:
    current = [snapshot]
    core = DnsCore(lambda: current[0], CLIENT, Cache())
    assert result(core, query("reviews.")) == "mesh"
    current[0] = mesh_snapshot({**MESH, "services": MESH["services"][1:]})
    assert result(core, query("reviews.default.svc.cluster.local.")) == "nxdomain"


# -- forwarding and the cache ----------------------------------------------------------------------
def sent(forward: Forward) -> dns.message.Message:
    """The query zt sends upstream, as the upstream reads it."""
    return dns.message.from_wire(forward.wire)


def upstream_answer(
    forward: Forward,
    ttl: int = 60,
    rcode: int = dns.rcode.NOERROR,
    soa: tuple[int, int] | None = None,
) -> dns.message.Message:
    reply = dns.message.make_response(sent(forward))
    reply.set_rcode(dns.rcode.Rcode.make(rcode))
    name = sent(forward).question[0].name
    if rcode == dns.rcode.NOERROR and soa is None:
        reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.10", "192.0.2.11"))
    if soa is not None:
        soa_ttl, minimum = soa
        reply.authority.append(
            dns.rrset.from_text(
                "example.org.", soa_ttl, "IN", "SOA", f"ns. host. 1 3600 600 86400 {minimum}"
            )
        )
    return reply


def accepted(forward: Forward, reply: dns.message.Message) -> Answer:
    """The upstream's reply as the upstream client hands it to the core."""
    answer = forward.accept(reply.to_wire())
    assert answer is not None
    return answer


def forward_of(core: DnsCore, q: dns.message.Message, now: float) -> Forward:
    command = core.handle(q.to_wire(), UDP, now)
    assert isinstance(command, Forward), command
    return command


def test_forwarded_answers_are_cached_for_their_smallest_ttl_and_served_aged(
    snapshot: Snapshot,
) -> None:
    core = core_for(snapshot)
    q = query("www.example.org.")
    forward = forward_of(core, q, now=100.0)
    assert sent(forward).id != q.id and sent(forward).edns == 0  # our own id and EDNS
    reply = core.forwarded(forward, accepted(forward, upstream_answer(forward, ttl=60)), now=100.2)
    first = dns.message.from_wire(reply.wire)
    assert (reply.result, first.id, addresses(first)) == (
        "forwarded",
        q.id,
        {"192.0.2.10", "192.0.2.11"},
    )
    assert not first.flags & dns.flags.AA

    q2 = query("WWW.example.org.")  # another id, another case: the same cache entry
    cached = answer(core, q2, now=130.9)
    assert (cached.id, addresses(cached), cached.answer[0].ttl) == (
        q2.id,
        {"192.0.2.10", "192.0.2.11"},
        30,
    )
    assert isinstance(core.handle(q.to_wire(), UDP, 160.3), Forward)  # 60 s later: asked again


def test_negative_answers_are_cached_for_the_soa_minimum(snapshot: Snapshot) -> None:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM); without an SOA, not at all."""
    core = core_for(snapshot)
    q = query("nope.example.org.")
    forward = forward_of(core, q, now=0.0)
    reply = core.forwarded(
        forward,
        accepted(forward, upstream_answer(forward, rcode=dns.rcode.NXDOMAIN, soa=(900, 20))),
        0.0,
    )
    assert dns.message.from_wire(reply.wire).rcode() == dns.rcode.NXDOMAIN
    hit = answer(core, q, now=19.0)
    assert hit.rcode() == dns.rcode.NXDOMAIN and hit.authority[0].ttl == 1
    assert isinstance(core.handle(q.to_wire(), UDP, 20.0), Forward)

    forward = forward_of(core, q, now=20.0)
    core.forwarded(
        forward, accepted(forward, upstream_answer(forward, rcode=dns.rcode.NXDOMAIN)), 20.0
    )
    assert isinstance(core.handle(q.to_wire(), UDP, 20.1), Forward)  # no SOA: not kept


def test_zero_ttl_and_servfail_are_not_cached_and_all_upstreams_failing_is_servfail(
    snapshot: Snapshot,
) -> None:
    core = core_for(snapshot)
    q = query("www.example.org.")
    forward = forward_of(core, q, now=0.0)
    core.forwarded(forward, accepted(forward, upstream_answer(forward, ttl=0)), 0.0)
    forward = forward_of(core, q, now=0.0)
    reply = core.forwarded(forward, None, 0.0)
    assert reply.result == "servfail"
    assert dns.message.from_wire(reply.wire).rcode() == dns.rcode.SERVFAIL
    assert isinstance(core.handle(q.to_wire(), UDP, 0.0), Forward)


def test_the_cache_is_bounded_and_drops_the_least_recently_used(snapshot: Snapshot) -> None:
    core = core_for(snapshot, cache=Cache(CacheSettings(max_entries=2)))
    for name in ("a.example.org.", "b.example.org.", "c.example.org."):
        forward = forward_of(core, query(name), 0.0)
        core.forwarded(forward, accepted(forward, upstream_answer(forward)), 0.0)
    assert len(core.cache) == 2
    assert isinstance(core.handle(query("a.example.org.").to_wire(), UDP, 1.0), Forward)
    assert isinstance(core.handle(query("c.example.org.").to_wire(), UDP, 1.0), Reply)


def test_upstream_replies_are_matched_by_id_and_question(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    forward = forward_of(core, query("www.example.org."), 0.0)
    good = upstream_answer(forward)
    assert forward.accept(good.to_wire()) is not None
    wrong_id = upstream_answer(forward)
    wrong_id.id = (sent(forward).id + 1) % 65536
    assert forward.accept(wrong_id.to_wire()) is None
    other = forward_of(core, query("other.example.org."), 0.0)
    assert forward.accept(upstream_answer(other).to_wire()) is None
    assert forward.accept(b"\x00\x01garbage") is None


# -- EDNS0 and truncation --------------------------------------------------------------------------
def big_forward(core: DnsCore, q: dns.message.Message) -> Reply:
    forward = forward_of(core, q, 0.0)
    reply = dns.message.make_response(sent(forward))
    ips = [f"198.51.100.{i}" for i in range(1, 61)]  # 60 A records: ~980 bytes
    reply.answer.append(dns.rrset.from_text(sent(forward).question[0].name, 60, "IN", "A", *ips))
    return core.forwarded(forward, accepted(forward, reply), 0.0)


def test_answers_are_truncated_to_the_clients_udp_size_with_tc(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    plain = big_forward(core, query("big.example.org."))  # no OPT: 512 bytes
    small = dns.message.from_wire(plain.wire)
    assert len(plain.wire) <= 512 and small.flags & dns.flags.TC and small.answer == []
    assert small.edns == -1

    edns = query("big.example.org.", use_edns=0, payload=4096)
    full = answer(core, edns)  # cached now; 4096 fits it
    assert not full.flags & dns.flags.TC and len(addresses(full)) == 60
    assert (full.edns, full.payload) == (0, 1232)  # our OPT, not the upstream's
    tcp = answer(core, query("big.example.org."), transport=TCP)
    assert not tcp.flags & dns.flags.TC and len(addresses(tcp)) == 60


def test_the_do_bit_is_passed_upstream_and_copied_back(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    q = query("www.example.org.", use_edns=0, want_dnssec=True)
    forward = forward_of(core, q, 0.0)
    assert sent(forward).ednsflags & dns.flags.DO
    reply = dns.message.from_wire(
        core.forwarded(forward, accepted(forward, upstream_answer(forward)), 0.0).wire
    )
    assert reply.ednsflags & dns.flags.DO
    mesh = answer(core, query("reviews.", use_edns=0, payload=1400, want_dnssec=True))
    assert mesh.edns == 0 and mesh.ednsflags & dns.flags.DO


def test_an_unknown_edns_version_is_badvers(snapshot: Snapshot) -> None:
    q = query("reviews.", use_edns=1)
    a = answer(core_for(snapshot), q)
    assert a.rcode() == dns.rcode.BADVERS and a.edns == 0  # RFC 6891 §6.1.3


# -- bad input -------------------------------------------------------------------------------------
def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, 0, 0)


def formerr(core: DnsCore, wire: bytes, transport: Transport = UDP) -> dns.message.Message:
    command = core.handle(wire, transport, 0.0)
    assert isinstance(command, Reply), command
    reply = dns.message.from_wire(command.wire)
    assert reply.id == struct.unpack("!H", wire[:2])[0] and reply.flags & dns.flags.QR
    return reply


@pytest.mark.parametrize(
    "wire",
    [
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # a compression pointer to itself: a loop
        header() + b"\x07example",  # a name cut short
        header() + b"\x00\x00\x01",  # a question cut short
        query("reviews.").to_wire() + b"junk",  # trailing bytes
        header(an=3) + b"\x00\x00\x01\x00\x01",  # promises answers it has not got
        header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # a 64-byte label (reserved bits)
    ],
    ids=["compression-loop", "short-name", "short-question", "trailing", "counts", "label-type"],
)
def test_malformed_queries_with_a_header_get_formerr(snapshot: Snapshot, wire: bytes) -> None:
    core = core_for(snapshot)
    assert formerr(core, wire).rcode() == dns.rcode.FORMERR
    assert result(core, query("reviews.")) == "mesh"  # the next query is served


def test_a_64k_tcp_message_gets_formerr(snapshot: Snapshot) -> None:
    wire = query("reviews.").to_wire()
    wire += b"\x00" * (65535 - len(wire))
    assert formerr(core_for(snapshot), wire, TCP).rcode() == dns.rcode.FORMERR


def test_zero_or_two_questions_are_formerr_and_other_opcodes_notimp(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    assert formerr(core, header(qd=0)).rcode() == dns.rcode.FORMERR
    two = query("reviews.")
    two.question.append(two.question[0])
    assert formerr(core, two.to_wire()).rcode() == dns.rcode.FORMERR
    notify = query("reviews.")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert formerr(core, notify.to_wire()).rcode() == dns.rcode.NOTIMP


@pytest.mark.parametrize(
    ("wire", "reason"),
    [(b"", "short"), (b"\x12\x34\x01", "short"), (header(flags=0x8100), "response")],
)
def test_packets_without_a_header_and_responses_are_dropped(
    snapshot: Snapshot, wire: bytes, reason: str
) -> None:
    assert core_for(snapshot).handle(wire, UDP, 0.0) == Drop(reason)


def test_random_bytes_never_raise(snapshot: Snapshot) -> None:
    core = core_for(snapshot)
    rng = random.Random(1)
    base = query("reviews.default.svc.cluster.local.", use_edns=0).to_wire()
    for _ in range(2000):
        wire = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        command = core.handle(bytes(wire[: rng.randint(0, len(wire))]), UDP, 0.0)
        assert isinstance(command, Reply | Forward | Drop)


def test_repeated_queries_reuse_the_answer_only_while_it_is_still_true(snapshot: Snapshot) -> None:
    """The memo of rendered answers: a new snapshot or one more second of cache age renders
    anew; only the id differs between two answers to the same bytes."""
    current = [snapshot]
    core = DnsCore(lambda: current[0], CLIENT, Cache())
    q = query("reviews.default.svc.cluster.local.")
    first, second = answer(core, q), answer(core, q)
    assert first.to_wire() == second.to_wire()
    q.id = (q.id + 1) % 65536
    assert answer(core, q).id == q.id
    moved = [
        {**s, "vips": ["10.96.9.9"]} if s["name"] == "reviews" else s for s in MESH["services"]
    ]
    current[0] = mesh_snapshot({**MESH, "services": moved})
    assert addresses(answer(core, q)) == {"10.96.9.9"}

    web = query("www.example.org.")
    forward = forward_of(core, web, now=100.0)
    core.forwarded(forward, accepted(forward, upstream_answer(forward, ttl=60)), now=100.0)
    ttls = [answer(core, web, now=t).answer[0].ttl for t in (100.1, 100.9, 101.0, 102.5)]
    assert ttls == [60, 60, 59, 58]


# -- what is asked upstream, and what an answer may serve ------------------------------------------
def test_only_the_cluster_domain_is_denied_other_svc_names_are_exact() -> None:
    """A ServiceEntry-like `a.b.svc.example.com` answers itself, but the rest of
    `svc.example.com` is someone else's zone: forwarded, not NXDOMAIN."""
    entry = {"name": "se", "hostname": "a.b.svc.example.com", "vips": ["240.240.0.9"]}
    core = core_for(mesh_snapshot({**MESH, "services": [*MESH["services"], entry]}))
    assert addresses(answer(core, query("a.b.svc.example.com."))) == {"240.240.0.9"}
    for name in ("other.b.svc.example.com.", "b.svc.example.com.", "svc.example.com."):
        assert isinstance(core.handle(query(name).to_wire(), UDP, 0.0), Forward)
    assert result(core, query("nope.default.svc.cluster.local.")) == "nxdomain"


def test_the_clients_rd_goes_upstream_and_rd_and_cd_keep_their_own_cache_entries(
    snapshot: Snapshot,
) -> None:
    core = core_for(snapshot)
    plain = query("www.example.org.")
    norecurse = query("www.example.org.")
    norecurse.flags &= ~dns.flags.RD
    unchecked = query("www.example.org.")
    unchecked.flags |= dns.flags.CD
    forward = forward_of(core, norecurse, 0.0)
    assert not sent(forward).flags & dns.flags.RD  # RFC 1035 §4.1.1: the client's choice
    forward = forward_of(core, unchecked, 0.0)
    assert sent(forward).flags & dns.flags.RD and sent(forward).flags & dns.flags.CD
    core.forwarded(forward, accepted(forward, upstream_answer(forward)), 0.0)
    assert answer(core, unchecked, 1.0).flags & dns.flags.CD  # cached for CD=1 clients
    # an unvalidated (CD=1) answer never reaches a CD=0 client, nor an RD=1 answer an RD=0 one
    assert isinstance(core.handle(plain.to_wire(), UDP, 1.0), Forward)
    assert isinstance(core.handle(norecurse.to_wire(), UDP, 1.0), Forward)


def test_without_edns_drops_only_our_opt(snapshot: Snapshot) -> None:
    forward = forward_of(core_for(snapshot), query("www.example.org.", want_dnssec=True), 0.0)
    plain = forward.without_edns()
    got = sent(plain)
    assert (got.edns, got.id, got.question) == (-1, sent(forward).id, sent(forward).question)
    assert plain.without_edns() is plain
