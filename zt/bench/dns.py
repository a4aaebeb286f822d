"""`zt bench dns`: zt's DNS proxy against dnsmasq on the same machine, in the same run.

Three workloads, each asked of both servers over UDP on loopback:
- `cached`: one external name; zt answers it from its cache (dnsmasq from its hosts file);
- `mesh`: a service hostname; zt answers it from the mesh (dnsmasq from its hosts file);
- `forwarded`: a new name every query (`<n>.fwd.example.org`), so zt forwards each one to
  dnsmasq and waits for it (dnsmasq answers them itself, from `--address`).
For each: queries/s with `window` queries in flight for `seconds`, and the p50 of one query at a
time. Servers and workloads alternate order each repetition; the report gives medians and the
median of each repetition's zt/dnsmasq ratio. zt's server runs in its own process (uvloop), as in
the node; the load generator is this process, one Python thread, whose own cost caps the faster
server's figures first: the ratios lean in zt's favour where dnsmasq is fast.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zt.lab.dnsmasq import Dnsmasq, free_udp_port

MESH_NAME = "reviews.default.svc.cluster.local"
CACHED_NAME = "web.example.org"
FWD_DOMAIN = "fwd.example.org"
CLIENT = "default/bench-client"
MODES = ("cached", "mesh", "forwarded")
SERVERS = ("dnsmasq", "zt")
HEADER = struct.Struct("!HHHHHH")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    reps: int
    seconds: float  # each throughput sample
    pings: int  # one-at-a-time queries per latency sample
    window: int = 16  # queries in flight during throughput samples


FULL = Sizes(reps=3, seconds=2.0, pings=2000)
QUICK = Sizes(reps=2, seconds=0.7, pings=500)
SMOKE = Sizes(reps=1, seconds=0.2, pings=50)
TIME_LIMIT = 60.0  # the whole run stops adding samples past this


@dataclass
class Result:
    qps: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # mode -> server -> reps
    p50_us: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # server -> unanswered or bad answers

    def add(self, table: str, mode: str, server: str, value: float) -> None:
        getattr(self, table).setdefault(mode, {}).setdefault(server, []).append(value)

    def ratio(self, table: str, mode: str) -> float:
        """Median over repetitions of zt/dnsmasq (for latency: dnsmasq/zt, so > 1 is zt better
        for both)."""
        rows: dict[str, list[float]] = getattr(self, table)[mode]
        pairs = list(zip(rows["zt"], rows["dnsmasq"], strict=False))
        if table == "qps":
            return statistics.median(z / d for z, d in pairs if d > 0)
        return statistics.median(d / z for z, d in pairs if z > 0)


# -- queries on the wire ---------------------------------------------------------------------------
def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def query_wire(qid: int, name: str) -> bytes:
    """An A query, RD set (RFC 1035 §4.1): built by hand so the load generator stays cheap."""
    return HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + _qname(name) + b"\x00\x01\x00\x01"


def answered(reply: bytes) -> bool:
    """NOERROR with at least one answer."""
    if len(reply) < HEADER.size:
        return False
    flags: int = HEADER.unpack_from(reply)[1]
    ancount: int = HEADER.unpack_from(reply)[3]
    return flags & 0x800F == 0x8000 and ancount > 0


class Names:
    """The query bytes of a mode: the same name, or a new one each time (`forwarded`)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._fixed = {"cached": CACHED_NAME, "mesh": MESH_NAME}.get(mode)
        self._n = 0
        self._tag = os.urandom(3).hex()  # new names in every run: nothing cached from the last

    def next(self, qid: int) -> bytes:
        if self._fixed is not None:
            return query_wire(qid, self._fixed)
        self._n += 1
        return query_wire(qid, f"q{self._n}-{self._tag}.{FWD_DOMAIN}")


# -- the load generator ----------------------------------------------------------------------------
def throughput(
    addr: tuple[str, int], names: Names, seconds: float, window: int
) -> tuple[float, int]:
    """Answers per second with `window` queries in flight; lost ones are sent again after
    0.2 s. Returns (rate, bad answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.settimeout(0.2)
        qid = 0
        for _ in range(window):
            qid = (qid + 1) & 0xFFFF
            sock.send(names.next(qid))
        done = bad = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                reply = b""
                bad += 1
            else:
                done += 1
                bad += not answered(reply)
            qid = (qid + 1) & 0xFFFF
            sock.send(names.next(qid))
        elapsed = time.perf_counter() - started
        return done / elapsed, bad


def latency_p50(addr: tuple[str, int], names: Names, pings: int) -> tuple[float, int]:
    """The median microseconds of one query at a time. Returns (p50, bad answers)."""
    samples: list[float] = []
    bad = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.settimeout(1.0)
        for i in range(pings):
            wire = names.next(i & 0xFFFF)
            start = time.perf_counter_ns()
            sock.send(wire)
            try:
                reply = sock.recv(4096)
            except TimeoutError:
                bad += 1
                continue
            samples.append((time.perf_counter_ns() - start) / 1000)
            bad += not answered(reply)
    return (statistics.median(samples) if samples else float("nan")), bad


# -- zt's server, in its own process ---------------------------------------------------------------
def _serve_zt(port: int, upstream: str, ready: multiprocessing.connection.Connection) -> None:
    import asyncio  # noqa: PLC0415

    import uvloop  # noqa: PLC0415

    from zt.config.convert import snapshot as to_snapshot  # noqa: PLC0415
    from zt.config.schema import MeshFile  # noqa: PLC0415
    from zt.dns.server import DnsServer, ServerSettings  # noqa: PLC0415
    from zt.dns.upstream import parse_upstream  # noqa: PLC0415

    mesh = to_snapshot(
        MeshFile.model_validate(
            {
                "workloads": [{"uid": CLIENT, "name": "bench-client", "workloadIps": ["10.1.0.5"]}],
                "services": [{"name": "reviews", "hostname": MESH_NAME, "vips": ["10.96.0.20"]}],
            }
        )
    )

    async def main() -> None:
        server = DnsServer(
            lambda: mesh,
            [parse_upstream(upstream)],
            socket.socket,
            client_uid=CLIENT,
            # unlimited: the bench measures the server, far past one pod's budget
            settings=ServerSettings(port=port, max_forwards=1024, rate_limit=None),
        )
        await server.start()
        ready.send("ready")
        try:
            await asyncio.Event().wait()  # until the parent terminates this process
        finally:
            await server.close()

    uvloop.run(main())


# -- the run ---------------------------------------------------------------------------------------
def bench_dns(sizes: Sizes, progress: Progress) -> Result:
    started = time.monotonic()
    result = Result()
    with tempfile.TemporaryDirectory(prefix="zt-bench-dns-") as tmp:
        hosts = {CACHED_NAME: ["192.0.2.10"], MESH_NAME: ["10.96.0.20"]}
        upstream = Dnsmasq(
            Path(tmp), hosts, log_queries=False, extra=[f"--address=/{FWD_DOMAIN}/192.0.2.99"]
        )
        with upstream:
            zt_port = free_udp_port("127.0.0.1")
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.get_context("fork").Process(
                target=_serve_zt, args=(zt_port, f"127.0.0.1:{upstream.port}", child), daemon=True
            )
            proc.start()
            try:
                if not parent.poll(10):
                    raise TimeoutError("zt's DNS server did not start within 10 s")
                parent.recv()
                addrs = {"dnsmasq": ("127.0.0.1", upstream.port), "zt": ("127.0.0.1", zt_port)}
                latency_p50(addrs["zt"], Names("cached"), 3)  # fills zt's cache
                _measure(sizes, addrs, result, progress, started)
            finally:
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
    return result


def _measure(
    sizes: Sizes,
    addrs: dict[str, tuple[str, int]],
    result: Result,
    progress: Progress,
    started: float,
) -> None:
    for rep in range(sizes.reps):
        for i, mode in enumerate(MODES):
            order = SERVERS if (rep + i) % 2 == 0 else SERVERS[::-1]
            for server in order:
                if time.monotonic() - started > TIME_LIMIT:
                    progress(f"time limit ({TIME_LIMIT:.0f} s): stopping at rep {rep + 1}")
                    return
                qps, bad = throughput(addrs[server], Names(mode), sizes.seconds, sizes.window)
                p50, bad_p = latency_p50(addrs[server], Names(mode), sizes.pings)
                result.add("qps", mode, server, qps)
                result.add("p50_us", mode, server, p50)
                result.failures[server] = result.failures.get(server, 0) + bad + bad_p
                progress(f"rep {rep + 1} {mode:9} {server:7} {qps:9.0f} q/s  p50 {p50:6.0f} us")


def render(result: Result) -> str:
    lines = [f"{'mode':10} {'zt q/s':>9} {'dnsmasq q/s':>12} {'zt p50 us':>10} {'dnsmasq p50':>12}"]
    for mode in result.qps:
        q, p = result.qps[mode], result.p50_us[mode]
        lines.append(
            f"{mode:10} {statistics.median(q['zt']):9.0f} {statistics.median(q['dnsmasq']):12.0f}"
            f" {statistics.median(p['zt']):10.0f} {statistics.median(p['dnsmasq']):12.0f}"
        )
    for mode in result.qps:
        lines.append(f"RATIO dns_{mode}_qps {result.ratio('qps', mode):.2f}")
        lines.append(f"RATIO dns_{mode}_p50 {result.ratio('p50_us', mode):.2f}")
    lines.append(f"failures {result.failures}")
    return "\n".join(lines)


def document(result: Result) -> dict[str, object]:
    return {
        "qps": result.qps,
        "p50_us": result.p50_us,
        "ratios": {
            f"dns_{mode}_{t}": result.ratio(table, mode)
            for mode in result.qps
            for table, t in (("qps", "qps"), ("p50_us", "p50"))
        },
        "failures": result.failures,
    }
