"""The DNS proxy's decisions, without I/O: bytes and time in, commands out.

`DnsCore.handle(wire, transport, now)` returns one of
- `Reply`: answer these bytes (a mesh name, NXDOMAIN under `svc.<cluster domain>`, a cached
  answer, an error);
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

from zt.dns import raw
from zt.dns.cache import KEY_FLAGS, Cache, Entry, Key
from zt.dns.raw import Answer, Malformed, scan
from zt.dns.wire import (
    QName,
    Query,
    Rejected,
    Transport,
    parse_query,
    render,
    respond,
)
from zt.state.model import Workload
from zt.state.names import DEFAULT_CLUSTER_DOMAIN, Found, Labels, MeshNames, mesh_names
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
    qname: QName | str = ""
    records: int = 0
    # until when the same query bytes get these same bytes (but the id), as long as the mesh's
    # names are the same generation: 0 never, inf until they change (`_Memo`)
    keep_until: float = field(default=0.0, compare=False, repr=False)


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
    def qid(self) -> int:
        """The id of the upstream query (zt's own, random)."""
        return int.from_bytes(self.wire[:2], "big")

    def without_edns(self) -> Forward:
        """The same query without zt's OPT (the last 11 bytes; ARCOUNT 0): RFC 6891 §7, a
        responder that answers FORMERR or NOTIMP to a query with an OPT may not speak EDNS, "A
        requester MAY then retry without EDNS"."""
        if self.wire[10:12] != b"\x00\x01":
            return self
        return replace(self, wire=self.wire[:10] + b"\x00\x00" + self.wire[12:-OPT_SIZE])

    def accept(self, wire: bytes) -> Answer | None:
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
            scanned = scan(wire)
        except Malformed:  # a malformed reply is no answer
            return None
        return Answer(wire, scanned) if scanned.question_end == end else None


Command = Reply | Forward | Drop
HEADER_SIZE = 12
OPT_SIZE = 11  # zt's own OPT: a root name, type, class, TTL, RDLENGTH 0 (raw.our_opt)


def _raw_question(wire: bytes) -> bytes | None:
    """The question section's bytes of a parsed query with one question, or None if its name
    uses compression (then it is rebuilt)."""
    i = HEADER_SIZE
    while wire[i] != 0:
        if wire[i] >= 0xC0:
            return None
        i += wire[i] + 1
    return wire[HEADER_SIZE : i + 5]


# RFC 1035 §4.2.1's classic UDP size: a larger query (EDNS options, padding) is not memoized,
# so a key costs at most this; a larger answer is not memoized either
MEMO_MAX_QUERY = 512
MEMO_MAX_ANSWER = 1232
MEMO_BYTES = 256 * 1024  # per pod, keys and answers and MEMO_OVERHEAD per entry
MEMO_OVERHEAD = 640  # Python's objects around one entry (key tuple, Reply, QName), measured ~650
MemoKey = tuple[Transport, bytes]  # the transport and the query but its id


class _Memo:
    """Rendered answers for identical query bytes (but the id), valid while the mesh's names are
    the same generation and until the reply's `keep_until`: dnspython takes ~200 us to parse
    and render an answer, a dictionary lookup ~1 us, and a pod asks the same few names again
    and again. At most `budget` bytes, the oldest entry dropped first; emptied when the names
    change (it holds no snapshot: the generation is a number)."""

    def __init__(self, budget: int = MEMO_BYTES) -> None:
        self.budget = budget
        self.bytes = 0
        self._generation = 0
        self._entries: dict[MemoKey, Reply] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: MemoKey, generation: int, now: float) -> Reply | None:
        if generation != self._generation:
            self._entries.clear()
            self.bytes, self._generation = 0, generation
            return None
        reply = self._entries.get(key)
        return reply if reply is not None and reply.keep_until > now else None

    def put(self, key: MemoKey, body: Reply) -> None:
        """Keep `body` (a reply without its 2-byte id) for `key`; `get` settled the generation."""
        if len(key[1]) > MEMO_MAX_QUERY or len(body.wire) > MEMO_MAX_ANSWER:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= _cost(key, old)
        self._entries[key] = body
        self.bytes += _cost(key, body)
        while self.bytes > self.budget:
            oldest = next(iter(self._entries))
            self.bytes -= _cost(oldest, self._entries.pop(oldest))


def _cost(key: MemoKey, reply: Reply) -> int:
    return len(key[1]) + len(reply.wire) + MEMO_OVERHEAD


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
        self.memo = _Memo()

    def names(self) -> tuple[Snapshot, MeshNames]:
        """The newest snapshot and its names, indexed once per snapshot for every pod's core
        (`mesh_names`); a core keeps neither, so an idle pod holds no old snapshot alive."""
        snapshot = self._source()
        return snapshot, mesh_names(snapshot, self.settings.cluster_domain)

    # -- queries -----------------------------------------------------------------------------------
    def handle(self, wire: bytes, transport: Transport, now: float) -> Command:
        snapshot, names = self.names()
        small = len(wire) <= MEMO_MAX_QUERY
        key = (transport, wire[2:])
        memoized = self.memo.get(key, names.generation, now) if small else None
        if memoized is not None:
            return replace(memoized, wire=wire[:2] + memoized.wire)
        parsed = parse_query(wire, transport)
        if isinstance(parsed, Rejected):
            if parsed.reply is None:
                return Drop(parsed.reason)
            return Reply(parsed.reply, parsed.reason, parsed.qtype)
        command = self._answer(parsed, now, wire, snapshot, names)
        if small and isinstance(command, Reply) and command.keep_until > now:
            self.memo.put(key, replace(command, wire=command.wire[2:]))
        return command

    def _answer(
        self, query: Query, now: float, wire: bytes, snapshot: Snapshot, names: MeshNames
    ) -> Command:
        client = snapshot.by_uid.get(self.client_uid)
        if client is None:
            # ztunnel answers SERVFAIL to a source it does not know
            return self._reply(
                query,
                respond(query, authoritative=False),
                "unknown_client",
                rcode=dns.rcode.SERVFAIL,
            )
        labels = tuple(label.lower() for label in query.labels)
        if query.qclass == IN:
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
            # the name exists, the type does not: NODATA (ztunnel forwards these; with no
            # cluster DNS behind zt an upstream would deny the name, RFC 8020)
            return self._reply(query, response, "mesh", keep_until=math.inf)
        addresses = list(found.target.addresses(client.network, 4 if qtype == A else 6))
        # kept until the names change; several addresses are shuffled per answer instead
        keep_until = math.inf if len(addresses) <= 1 else 0.0
        if not addresses:
            return self._reply(query, response, "mesh", keep_until=keep_until)
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
        return self._reply(query, response, "mesh", keep_until=keep_until)

    def _absent(self, query: Query, labels: Labels, names: MeshNames) -> Reply:
        """A name in the mesh domain (`svc.<cluster domain>`) the mesh does not hold: NXDOMAIN,
        authoritative, without an SOA (as ztunnel's error answers; so clients do not cache it,
        RFC 2308 §5). A name above mesh names (`default.svc.cluster.local`) exists: NODATA
        instead (RFC 8020 §2)."""
        response = respond(query, authoritative=True)
        if labels in names.interior:
            return self._reply(query, response, "mesh", keep_until=math.inf)
        return self._reply(
            query, response, "nxdomain", rcode=dns.rcode.NXDOMAIN, keep_until=math.inf
        )

    def _upstream(self, query: Query, labels: Labels, now: float, wire: bytes) -> Command:
        # the bits that change what an upstream answers are part of the key: DO (RFC 3225), CD
        # (RFC 4035 §3.2.2: unvalidated data must not reach a CD=0 client), RD (RFC 1035 §4.1.1)
        key: Key = (labels, query.qtype, query.qclass, query.dnssec_ok, query.flags & KEY_FLAGS)
        entry = self.cache.get(key, now)
        question = _raw_question(wire) or (
            b"".join(bytes([len(label)]) + label for label in query.labels)
            + b"\x00"
            + struct.pack("!HH", query.qtype, query.qclass)
        )
        if entry is not None:
            return self._cached(query, entry, question, now)
        return Forward(query, key, self._upstream_query(query, question), question)

    def _upstream_query(self, query: Query, question: bytes) -> bytes:
        """The client's question, as it sent it, under our own header and OPT (built from bytes:
        dnspython would take ~100 us): a fresh random id, the client's RD (RFC 1035 §4.1.1: "it
        directs the name server to pursue the query recursively", the client's choice) and CD;
        EDNS0 with our payload size and the client's DO bit (RFC 6891 §6.1.2)."""
        flags = query.flags & (raw.RD | raw.CD)
        header = struct.pack("!6H", self._rng.getrandbits(16), flags, 1, 0, 0, 1)
        return header + question + raw.our_opt(query.dnssec_ok)

    def forwarded(self, forward: Forward, answer: Answer | None, now: float) -> Reply:
        """The client's answer once the upstreams answered (`answer`) or all failed (None:
        SERVFAIL, RFC 1035 §4.1.1 "Server failure"). The upstream's records go out as they came,
        under the client's id and question and zt's flags and OPT (zt/dns/raw.py)."""
        query = forward.query
        if answer is None:
            response = respond(query, authoritative=False)
            return self._reply(query, response, "servfail", rcode=dns.rcode.SERVFAIL)
        self.cache.put(forward.key, answer, now)
        scanned = answer.scanned
        authentic = bool(scanned.flags & raw.AD)
        wire = self._raw_reply(
            query,
            forward.question,
            rcode=scanned.rcode,
            authentic=authentic,
            counts=scanned.counts,
            records=answer.records,
        )
        return Reply(wire, "forwarded", query.type_label, query.qname, scanned.counts[0])

    def _cached(self, query: Query, entry: Entry, question: bytes, now: float) -> Reply:
        records = entry.records_at(now)
        wire = self._raw_reply(
            query,
            question,
            rcode=entry.rcode,
            authentic=entry.authentic,
            counts=entry.counts,
            records=records,
        )
        # the same bytes until the TTLs count down one more second, or the entry expires
        age = now - entry.stored
        keep_until = entry.stored + min(math.floor(age) + 1, entry.ttl)
        return Reply(wire, "cached", query.type_label, query.qname, entry.counts[0], keep_until)

    @staticmethod
    def _raw_reply(
        query: Query,
        question: bytes,
        *,
        rcode: int,
        authentic: bool,
        counts: tuple[int, int, int],
        records: bytes,
    ) -> bytes:
        """The header `respond()` would make: the query's id, RD and CD, RA, the rcode; AD only
        if the upstream set it and the query had AD or DO (RFC 6840 §5.8); not authoritative."""
        flags = raw.QR | raw.RA | (query.flags & (raw.RD | raw.CD)) | (rcode & 0xF)
        if authentic and (query.dnssec_ok or query.flags & raw.AD):
            flags |= raw.AD
        opt = raw.our_opt(query.dnssec_ok) if query.edns >= 0 else b""
        return raw.message(
            query.qid, flags, question, counts=counts, records=records, opt=opt, limit=query.limit
        )

    @staticmethod
    def _reply(
        query: Query,
        response: dns.message.Message,
        result: str,
        *,
        rcode: int | None = None,
        keep_until: float = 0.0,
    ) -> Reply:
        if rcode is not None:
            response.set_rcode(dns.rcode.Rcode.make(rcode))
        records = sum(len(r) for r in response.answer)
        wire = render(response, query.limit)
        return Reply(wire, result, query.type_label, query.qname, records, keep_until)
