"""What crosses the node-to-node link: a scapy capture on a node's `eth1` and its pure analysis.

The lab's claim: "every packet between the nodes is TCP to or from :15008 and its payload is TLS records";
"the pods' payload never appears in clear". docs/design.md §7: start `AsyncSniffer` from a thread that is
inside the netns, with `promisc=False`. The analysis takes plain `Segment`s, so it is unit-tested
without scapy or root.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from zt.capture.netns import run_in_netns

HBONE_PORT = 15008
# RFC 8446 §5.1: ContentType change_cipher_spec(20), alert(21), handshake(22), application_data(23);
# "legacy_record_version ... MUST be set to 0x0303 ... except for the initial ClientHello ... 0x0301"
TLS_TYPES = frozenset({20, 21, 22, 23})
TLS_VERSIONS = frozenset({0x0301, 0x0303})
TLS_MAX_RECORD = 2**14 + 256  # RFC 8446 §5.2: "MUST NOT exceed 2^14 + 256 bytes"
SYN, ACK = 0x02, 0x10


@dataclass(frozen=True)
class Segment:
    src: str
    dst: str
    proto: str  # "tcp", "udp", "icmp", ... (IP packets only)
    sport: int = 0
    dport: int = 0
    seq: int = 0
    flags: int = 0
    payload: bytes = b""

    @property
    def flow(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)


class NotTls(ValueError):
    pass


def tls_records(stream: bytes) -> int:
    """How many TLS records a byte stream holds; the last may be cut off (capture ended)."""
    pos = count = 0
    while pos + 5 <= len(stream):
        kind, version = stream[pos], int.from_bytes(stream[pos + 1 : pos + 3], "big")
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if kind not in TLS_TYPES or version not in TLS_VERSIONS or length > TLS_MAX_RECORD:
            raise NotTls(f"offset {pos}: type {kind}, version {version:#06x}, length {length}")
        pos += 5 + length
        count += 1
    return count


def _signed(delta: int) -> int:
    """A sequence-number difference (mod 2^32) as a signed offset."""
    delta %= 2**32
    return delta - 2**32 if delta >= 2**31 else delta


def reassemble(segments: list[Segment]) -> tuple[bytes, bool]:
    """One direction of a TCP flow: (bytes, from_syn). Without its SYN in the capture (a pooled
    tunnel opened earlier) the bytes start at the lowest sequence number seen."""
    syn = next((s for s in segments if s.flags & SYN), None)
    data = [s for s in segments if s.payload]
    if syn is not None:
        base = syn.seq + 1
    elif data:
        base = data[0].seq + min(_signed(s.seq - data[0].seq) for s in data)
    else:
        return b"", False
    buf = bytearray()
    for seg in sorted(data, key=lambda s: _signed(s.seq - base)):
        offset = _signed(seg.seq - base)
        if offset < 0 or offset > len(buf):
            break  # a gap (lost by the capture): what follows can't be aligned
        buf[offset : offset + len(seg.payload)] = seg.payload
    return bytes(buf), syn is not None


def tls_aligned(stream: bytes, from_syn: bool) -> int:
    """TLS records in a flow's bytes. From its SYN the first byte must start a record; a flow
    caught in the middle must show a chain of at least two valid records from some offset within
    the first maximal record (random or clear bytes can't pass: each header needs one of 4
    types and one of 2 versions)."""
    if from_syn or not stream:
        return tls_records(stream)
    for start in range(min(len(stream), TLS_MAX_RECORD + 5)):
        try:
            n = tls_records(stream[start:])
        except NotTls:
            continue
        if n >= 2 or (n == 1 and start == 0):
            return n
    raise NotTls(f"no TLS record boundary found in {len(stream)} bytes caught mid-flow")


@dataclass(frozen=True)
class WireReport:
    packets: int  # IP packets between mesh pods on the link
    flows: int  # TCP flows (one direction each) between mesh pods
    tls_records: int  # records parsed, flow by flow
    whole_flows: int  # flows with payload checked record by record
    not_hbone: tuple[Segment, ...] = ()  # between mesh pods but not TCP to/from :15008
    in_clear: tuple[Segment, ...] = ()  # any packet on the link carrying the marker
    not_tls: tuple[str, ...] = field(default=())  # flows whose bytes are not TLS records

    @property
    def ok(self) -> bool:
        return (
            self.packets > 0
            and self.whole_flows > 0
            and not self.not_hbone
            and not self.in_clear
            and not self.not_tls
        )

    def summary(self) -> str:
        return (
            f"{self.packets} pkts, {self.flows} flows :15008, {self.tls_records} TLS records "
            f"in {self.whole_flows} flows; not-HBONE {len(self.not_hbone)}, "
            f"marker in clear {len(self.in_clear)}, non-TLS flows {len(self.not_tls)}"
        )


def analyse(segments: Iterable[Segment], mesh_ips: set[str], marker: bytes) -> WireReport:
    """Judge a capture: every IP packet between two mesh (HBONE) pods must be TCP to or from
    :15008 carrying TLS records; no packet may carry the marker in clear."""
    segs = list(segments)
    between = [s for s in segs if s.src in mesh_ips and s.dst in mesh_ips]
    not_hbone = tuple(
        s for s in between if s.proto != "tcp" or HBONE_PORT not in (s.sport, s.dport)
    )
    in_clear = tuple(s for s in segs if marker and marker in s.payload)
    flows: dict[tuple[str, int, str, int], list[Segment]] = {}
    for s in between:
        if s.proto == "tcp":
            flows.setdefault(s.flow, []).append(s)
    records = whole = 0
    not_tls = []
    for key, flow in flows.items():
        stream, from_syn = reassemble(flow)
        try:
            records += tls_aligned(stream, from_syn)
            whole += 1 if stream else 0
        except NotTls as exc:
            not_tls.append(f"{key}: {exc}")
    return WireReport(len(between), len(flows), records, whole, not_hbone, in_clear, tuple(not_tls))


def to_segment(pkt: Any) -> Segment | None:
    """A scapy packet as a Segment (IP and IPv6 only)."""
    # scapy takes ~1 s to import: only the demo and the wire tests pay it, not every `zt` command
    from scapy.layers.inet import IP, TCP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415

    ip = pkt[IP] if pkt.haslayer(IP) else pkt[IPv6] if pkt.haslayer(IPv6) else None
    if ip is None:
        return None
    if pkt.haslayer(TCP):
        tcp = pkt[TCP]
        return Segment(
            str(ip.src),
            str(ip.dst),
            "tcp",
            int(tcp.sport),
            int(tcp.dport),
            int(tcp.seq),
            int(tcp.flags),
            bytes(tcp.payload),
        )
    proto = ip.payload.name.lower() if ip.payload is not None else "ip"
    return Segment(str(ip.src), str(ip.dst), proto, payload=bytes(ip.payload))


@contextmanager
def sniffing(netns: str, iface: str = "eth1", *, limit: int = 200_000) -> Iterator[list[Segment]]:
    """Capture IP packets on iface inside netns; the list fills when the block exits."""
    # slow import, see to_segment; the layers must be loaded before the sniffer's socket opens
    # or scapy can't map the link type to Ether and hands back Raw packets
    import scapy.layers.inet6  # noqa: F401, PLC0415
    from scapy.sendrecv import AsyncSniffer  # noqa: PLC0415

    started = threading.Event()
    out: list[Segment] = []

    def start() -> Any:
        sniffer = AsyncSniffer(
            iface=iface, promisc=False, store=True, count=limit, started_callback=started.set
        )
        sniffer.start()
        return sniffer

    sniffer = run_in_netns(netns, start)
    try:
        if not started.wait(10):
            raise TimeoutError(f"sniffer on {netns}/{iface} did not start")
        yield out
    finally:
        if sniffer.running:
            sniffer.stop(join=True)
        out.extend(s for p in sniffer.results or [] if (s := to_segment(p)) is not None)
