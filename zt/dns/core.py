"""The DNS proxy's decisions, without I/O: bytes and time in, commands out.

`DnsCore.handle(wire, transport, now)` returns one of
- `Reply`: answer these bytes (a mesh name, NXDOMAIN in a mesh domain, a cached answer, an error);
- `Forward`: ask the upstream resolvers `Forward.wire`, then hand what came back (or None: every
  upstream failed) to `DnsCore.forwarded`, which returns the `Reply`;
- `Drop`: send nothing (no readable header, or a response).
One core serves one pod (the client): its namespace picks the search domains and its network the
VIPs (docs/dns.md).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from zt.dns.cache import Cache, Key
from zt.state.names import DEFAULT_CLUSTER_DOMAIN, Found, Labels, MeshNames, mesh_names
from zt.dns.wire import (
    OUR_PAYLOAD,
    Query,
    Rejected,
    Transport,
    parse_query,
    render,
    respond,
)
from zt.state.model import Workload
from zt.state.snapshot import Snapshot

# ztunnel's DEFAULT_TTL_SECONDS: the TTL of every record zt answers from the mesh
MESH_TTL = 30
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
IN = dns.rdataclass.IN


@dataclass(frozen=True)
class Reply:
    wire: bytes
    result: str  # metrics/log: mesh, nxdomain, cached, forwarded, servfail, formerr, ...
    qtype: str = "none"
    qname: str = ""
    records: int = 0


@dataclass(frozen=True)
class Drop:
    reason: str


@dataclass(frozen=True)
class Forward:
    query: Query
    key: Key
    wire: bytes = field(repr=False)  # the query for the upstreams
    question: bytes = field(repr=False)  # its question section, as sent

    @property
    def upstream(self) -> dns.message.Message:
        return dns.message.from_wire(self.wire)

    def accept(self, wire: bytes) -> dns.message.Message | None:
        """The upstream's answer to this query, or None for anything else (RFC 5452 §9.1: match
        the id, the question and the source; the source is the connected socket's job). Names
        compare case-insensitively (RFC 4343), types and classes exactly."""
        end = HEADER_SIZE + len(self.question)
        head = wire[:HEADER_SIZE]
        if len(wire) < end or head[:2] != self.wire[:2] or not head[2] & 0x80:
            return None
        got, want = wire[HEADER_SIZE:end], self.question
        if got[-4:] != want[-4:] or got[:-4].lower() != want[:-4].lower():
            return None
        try:
            return dns.message.from_wire(wire)
        except Exception:  # a malformed reply is no answer; dnspython raises many kinds
            return None


Command = Reply | Forward | Drop
HEADER_SIZE = 12


def _raw_question(wire: bytes) -> bytes | None:
    """The question section's bytes of a parsed query with one question, or None if its name
    uses compression (then it is rebuilt)."""
    i = HEADER_SIZE
    while wire[i] != 0:
        if wire[i] >= 0xC0:
            return None
        i += wire[i] + 1
    return wire[HEADER_SIZE : i + 5]


MEMO_ENTRIES = 4096


@dataclass(frozen=True)
class _Memo:
    """A rendered answer for identical query bytes (but the id), valid while the snapshot is the
    same one and until `until`: dnspython takes ~200 us to parse and render an answer, a
    dictionary lookup ~1 us, and a pod asks the same few names again and again."""

    snapshot: Snapshot
    until: float
    reply: Reply  # its wire without the 2-byte id


@dataclass(frozen=True)
class CoreSettings:
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    mesh_ttl: int = MESH_TTL


class DnsCore:
    def __init__(
        self,
        names: Callable[[], Snapshot],
        client_uid: str,
        cache: Cache,
        settings: CoreSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._source = names
        self.client_uid = client_uid
        self.cache = cache
        self.settings = settings or CoreSettings()
        # upstream ids must be unpredictable (RFC 5452 §4.3); tests pass a seeded Random
        self._rng = rng or random.SystemRandom()
        self._snapshot: Snapshot | None = None
        self._names = MeshNames(cluster_domain=())
        self._memo: dict[tuple[Transport, bytes], _Memo] = {}
        self._keep_until = 0.0  # set by the answer being built: how long it may be memoized

    def names(self) -> tuple[Snapshot, MeshNames]:
        """The newest snapshot and its names, indexed once per snapshot."""
        snapshot = self._source()
        if snapshot is not self._snapshot:
            self._names = mesh_names(snapshot, self.settings.cluster_domain)
            self._snapshot = snapshot
        return snapshot, self._names

    # -- queries -----------------------------------------------------------------------------------
    def handle(self, wire: bytes, transport: Transport, now: float) -> Command:
        key = (transport, wire[2:])
        memo = self._memo.get(key)
        if memo is not None and memo.until > now and memo.snapshot is self._source():
            return replace(memo.reply, wire=wire[:2] + memo.reply.wire)
        parsed = parse_query(wire, transport)
        if isinstance(parsed, Rejected):
            if parsed.reply is None:
                return Drop(parsed.reason)
            return Reply(parsed.reply, parsed.reason, parsed.qtype)
        self._keep_until = now
        command = self._answer(parsed, now, wire)
        if isinstance(command, Reply) and self._keep_until > now and self._snapshot is not None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()  # bounded; the live names come back at once
            body = replace(command, wire=command.wire[2:])
            self._memo[key] = _Memo(self._snapshot, self._keep_until, body)
        return command

    def _answer(self, query: Query, now: float, wire: bytes) -> Command:
        snapshot, names = self.names()
        client = snapshot.by_uid.get(self.client_uid)
        if client is None:
            # ztunnel answers SERVFAIL to a source it does not know
            return self._reply(
                query,
                respond(query, authoritative=False),
                "unknown_client",
                rcode=dns.rcode.SERVFAIL,
            )
        qname = query.question.name
        labels = tuple(label.lower() for label in qname.labels[:-1])
        if query.question.rdclass == IN:
            found = names.find(labels, client.namespace)
            if found is not None:
                return self._mesh(query, client, found)
            if names.in_mesh_domain(labels):
                return self._absent(query, labels, names)
        return self._upstream(query, labels, now, wire)

    def _mesh(self, query: Query, client: Workload, found: Found) -> Reply:
        """ztunnel's Store::lookup for a name it found: A/AAAA records of the client's family
        (none: an empty NOERROR, "not NXDOMAIN, since we found the host"), after a CNAME from
        the query name to the name left once a search suffix was stripped."""
        response = respond(query, authoritative=True)
        qtype = query.qtype
        if qtype not in (A, AAAA):
            self._keep_until = math.inf
            # the name exists, the type does not: NODATA (ztunnel forwards these; with no
            # cluster DNS behind zt an upstream would deny the name, RFC 8020)
            return self._reply(query, response, "mesh")
        addresses = list(found.target.addresses(client.network, 4 if qtype == A else 6))
        if len(addresses) <= 1:
            self._keep_until = math.inf  # until the snapshot changes; several are shuffled
        if not addresses:
            return self._reply(query, response, "mesh")
        self._rng.shuffle(addresses)
        owner = query.question.name
        ttl = self.settings.mesh_ttl
        if found.stripped is not None and not found.wildcard:
            target = dns.name.Name((*found.stripped, b""))
            cname = dns.rrset.RRset(owner, IN, dns.rdatatype.CNAME)
            cname.add(dns.rdtypes.ANY.CNAME.CNAME(IN, dns.rdatatype.CNAME, target), ttl)  # type: ignore[no-untyped-call]
            response.answer.append(cname)
            owner = target
        rrset = dns.rrset.RRset(owner, IN, query.question.rdtype)
        rdata = dns.rdtypes.IN.A.A if qtype == A else dns.rdtypes.IN.AAAA.AAAA
        for ip in addresses:
            rrset.add(rdata(IN, qtype, str(ip)), ttl)
        response.answer.append(rrset)
        return self._reply(query, response, "mesh")

    def _absent(self, query: Query, labels: Labels, names: MeshNames) -> Reply:
        """A name in a mesh domain the mesh does not hold: NXDOMAIN, authoritative, without an
        SOA (as ztunnel's error answers; so clients do not cache it, RFC 2308 §5). A name above
        mesh names (`default.svc.cluster.local`) exists: NODATA instead (RFC 8020 §2)."""
        self._keep_until = math.inf
        response = respond(query, authoritative=True)
        if labels in names.interior:
            return self._reply(query, response, "mesh")
        return self._reply(query, response, "nxdomain", rcode=dns.rcode.NXDOMAIN)

    def _upstream(self, query: Query, labels: Labels, now: float, wire: bytes) -> Command:
        q = query.question
        key: Key = (labels, int(q.rdtype), int(q.rdclass), query.dnssec_ok)
        entry = self.cache.get(key, now)
        if entry is not None:
            # the same bytes until the TTLs count down one more second, or the entry expires
            age = now - entry.stored
            self._keep_until = entry.stored + min(math.floor(age) + 1, entry.ttl)
            response = respond(query, authoritative=False)
            self.cache.fill(entry, response, now)
            self._drop_ad(query, response)
            return self._reply(query, response, "cached")
        return Forward(query, key, *self._upstream_query(query, wire))

    def _upstream_query(self, query: Query, wire: bytes) -> tuple[bytes, bytes]:
        """The client's question, as it sent it, under our own header and OPT (built from bytes:
        dnspython would take ~100 us): a fresh random id, RD, the client's CD; EDNS0 with our
        payload size and the client's DO bit (RFC 6891 §6.1.2)."""
        question = _raw_question(wire) or (
            (query.question.name.to_wire() or b"")
            + struct.pack("!HH", query.qtype, query.question.rdclass)
        )
        flags = dns.flags.RD | (query.message.flags & dns.flags.CD)
        header = struct.pack("!6H", self._rng.getrandbits(16), flags, 1, 0, 0, 1)
        opt = b"\x00" + struct.pack(
            "!HHIH", dns.rdatatype.OPT, OUR_PAYLOAD, dns.flags.DO if query.dnssec_ok else 0, 0
        )
        return header + question + opt, question

    def forwarded(self, forward: Forward, answer: dns.message.Message | None, now: float) -> Reply:
        """The client's answer once the upstreams answered (`answer`) or all failed (None:
        SERVFAIL, RFC 1035 §4.1.1 "Server failure")."""
        query = forward.query
        response = respond(query, authoritative=False)
        if answer is None:
            return self._reply(query, response, "servfail", rcode=dns.rcode.SERVFAIL)
        self.cache.put(forward.key, answer, now)
        response.set_rcode(answer.rcode())
        response.flags |= answer.flags & dns.flags.AD
        response.answer = list(answer.answer)
        response.authority = list(answer.authority)
        response.additional = list(answer.additional)
        self._drop_ad(query, response)
        return self._reply(query, response, "forwarded")

    @staticmethod
    def _drop_ad(query: Query, response: dns.message.Message) -> None:
        # RFC 6840 §5.8: set AD in a response only if the query had AD or DO set
        if not (query.dnssec_ok or query.message.flags & dns.flags.AD):
            response.flags &= ~dns.flags.AD

    @staticmethod
    def _reply(
        query: Query, response: dns.message.Message, result: str, *, rcode: int | None = None
    ) -> Reply:
        if rcode is not None:
            response.set_rcode(dns.rcode.Rcode.make(rcode))
        records = sum(len(r) for r in response.answer)
        return Reply(
            render(response, query.limit),
            result,
            query.type_label,
            query.question.name.to_text(),
            records,
        )
