"""What one pod's DNS proxy holds in memory is bounded in bytes, and old mesh state is let go:
the memo of rendered answers, the cache of upstream answers, the names index of a snapshot."""

from __future__ import annotations

import gc
import random
import weakref

import dns.edns
import dns.message
import dns.rrset

from tests.dns.conftest import CLIENT, MESH, mesh_snapshot
from zt.dns.cache import ENTRY_OVERHEAD, Cache, CacheSettings
from zt.dns.core import MEMO_BYTES, DnsCore, Forward, Reply
from zt.dns.raw import Answer
from zt.dns.wire import Transport
from zt.state.names import mesh_names
from zt.state.snapshot import Snapshot

UDP, TCP = Transport.UDP, Transport.TCP


def core_for(current: list[Snapshot], cache: Cache | None = None) -> DnsCore:
    return DnsCore(
        lambda: current[0], CLIENT, cache if cache is not None else Cache(), rng=random.Random(3)
    )


def reply(core: DnsCore, wire: bytes, now: float = 0.0, transport: Transport = UDP) -> Reply:
    command = core.handle(wire, transport, now)
    assert isinstance(command, Reply), command
    return command


def test_padded_queries_are_answered_but_not_memoized(snapshot: Snapshot) -> None:
    """A 60 KB EDNS option made each memo entry 60 KB (61 MB for 1000 names, never freed). The
    gate refuses such a query now (zt/dns/wire.py `gate`); one between the memo's limit (512
    bytes) and the gate's (1232) is answered and still not kept."""
    core = core_for([snapshot])
    pad = dns.edns.GenericOption(dns.edns.OptionType.make(65001), b"x" * 600)
    for i in range(20):
        q = dns.message.make_query(f"x{i}.default.svc.cluster.local.", "A", use_edns=0)
        q.use_edns(0, options=[pad])
        assert reply(core, q.to_wire(max_size=65535), transport=TCP).result == "nxdomain"
    assert (len(core.memo), core.memo.bytes) == (0, 0)


def test_the_memo_stays_within_its_byte_budget_and_keeps_serving(snapshot: Snapshot) -> None:
    core = core_for([snapshot])
    assert core.memo.budget == MEMO_BYTES
    core.memo.budget = 8 * 1024  # fewer queries to fill it
    wires = [
        dns.message.make_query(f"n{i}.default.svc.cluster.local.", "A").to_wire() for i in range(64)
    ]
    for wire in wires:
        assert reply(core, wire).result == "nxdomain"
        assert core.memo.bytes <= 8 * 1024
    assert 0 < len(core.memo) < len(wires)  # the oldest went first
    again = reply(core, wires[-1])  # the newest is served from the memo, under its own id
    assert again.wire[:2] == wires[-1][:2] and again.result == "nxdomain"


def test_a_new_snapshot_empties_the_memo_and_no_core_keeps_an_old_snapshot_alive() -> None:
    first = mesh_snapshot()
    current = [first]
    busy, idle = core_for(current), core_for(current)
    q = dns.message.make_query("reviews.default.svc.cluster.local.", "A").to_wire()
    for core in (busy, idle):
        assert reply(core, q).result == "mesh"
    # one index per snapshot, shared by every pod's core (and zt/state/hostnames.py)
    assert busy.names()[1] is idle.names()[1] is mesh_names(first)
    gone_snapshot, gone_names = weakref.ref(first), weakref.ref(busy.names()[1])
    current[0] = mesh_snapshot({**MESH, "services": MESH["services"][1:]})
    del first
    assert reply(busy, q).result == "nxdomain"  # the memo does not answer from the old names
    assert len(busy.memo) == 1
    gc.collect()
    # the idle core's memo still holds its old answer (bytes), but not the snapshot or its index
    assert gone_snapshot() is None and gone_names() is None
    assert reply(idle, q).result == "nxdomain"


def _forwarded(core: DnsCore, name: str, records: int, ttl: int, now: float) -> None:
    forward = core.handle(dns.message.make_query(name, "A").to_wire(), TCP, now)
    assert isinstance(forward, Forward)
    up = dns.message.from_wire(forward.wire)
    answer = dns.message.make_response(up)
    ips = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(records)]
    answer.answer.append(dns.rrset.from_text(up.question[0].name, ttl, "IN", "A", *ips))
    accepted = forward.accept(answer.to_wire(max_size=65535))
    assert isinstance(accepted, Answer)
    core.forwarded(forward, accepted, now)


def test_the_cache_is_bounded_by_bytes_and_skips_large_answers(snapshot: Snapshot) -> None:
    budget = 20 * (ENTRY_OVERHEAD + 16 * 10)
    cache = Cache(CacheSettings(max_bytes=budget, max_answer_bytes=1024))
    core = core_for([snapshot], cache)
    _forwarded(core, "big.example.org.", 100, 300, 0.0)  # 1,600 bytes of records: not kept
    assert len(cache) == 0
    for i in range(40):
        _forwarded(core, f"n{i}.example.org.", 10, 300, 0.0)  # 160 bytes of records each
        assert cache.bytes <= budget
    assert len(cache) == 20
    assert isinstance(
        core.handle(dns.message.make_query("n0.example.org.", "A").to_wire(), UDP, 1.0), Forward
    )
    assert (
        reply(core, dns.message.make_query("n39.example.org.", "A").to_wire(), 1.0).result
        == "cached"
    )


def test_expired_entries_are_swept_without_being_asked_for(snapshot: Snapshot) -> None:
    cache = Cache(CacheSettings(sweep_interval=30.0))
    core = core_for([snapshot], cache)
    for i in range(10):
        _forwarded(core, f"short{i}.example.org.", 1, 10, 0.0)
    _forwarded(core, "long.example.org.", 1, 3600, 5.0)
    assert len(cache) == 11
    _forwarded(core, "next.example.org.", 1, 3600, 31.0)  # a put after the interval sweeps
    assert (len(cache), cache.bytes) == (2, 2 * (ENTRY_OVERHEAD + 16))  # one A record: 16 bytes
