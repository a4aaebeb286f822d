"""HBONE benchmark (not a test): direct TCP vs an Envoy client+server pair vs a zt client+server pair.

All on loopback, interleaved repetitions (alternating order), medians with min..max (docs/design.md §8).
Each proxy runs in its own process (Envoy with --concurrency 1; zt client and zt server as `--role`
subprocesses of this script, on uvloop when it is installed); the load generator runs here and the
target server in a subprocess.

    make bench [BENCH_ARGS=--quick]          # or: .venv/bin/python -m bench.hbone_bench [--quick]
    .venv/bin/python -m bench.hbone_bench --variant zt_asyncio=asyncio \
        --variant zt_base=asyncio:/tmp/base   # levers: extra zt pairs measured in the same run

Metrics: one-connection bulk throughput (echo both ways, upload only, download only; MB/s, CPU s/GB
of the proxy processes), 64 B ping-pong latency p50/p99 (µs, added over direct), new tunnels per
second on a pooled connection (connect, 64 B echo, close; CPU ms per tunnel), full mTLS handshakes
per second, proxy RSS per idle tunnel, aggregate upload throughput through N zt worker processes
sharing SO_REUSEPORT listeners vs one, and (as root) connection set-up through BPF capture vs
iptables REDIRECT (bench/capture_bench.py, in a netns it creates and removes). The last lines are
machine-readable (bench/report.py). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.report import Results, machine_lines, parse_capture_lines, summary, table
from tests.interop.envoy import (
    ClientRoute,
    TlsFiles,
    hbone_client_config,
    hbone_server_config,
    run_envoy,
)
from zt.addr import SocketAddr
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy.client import dial
from zt.proxy.forward import TcpToHbone
from zt.proxy.pool import HbonePool, PoolKey
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check, server_peer_check

TD = "cluster.local"
SERVER = SpiffeId(TD, "bench", "server")
CLIENT = SpiffeId(TD, "bench", "client")
CHUNK = 1 << 20
# RFC 9113 §3.4: the client preface, then an empty SETTINGS frame (Envoy answers only after it).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


# ---- roles run as subprocesses ---------------------------------------------------------------


def _target(port: int) -> None:
    """Target server (threads). First byte "U": sink until EOF, answer the byte count (8 bytes,
    the "U" included);
    "D" + 8-byte size: send that many bytes, FIN; anything else: echo (that byte too) until EOF."""
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    block = bytes(CHUNK)

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = conn.recv(CHUNK)
            if data[:1] == b"U":
                total = len(data)  # the "U" counts: it is part of the upload
                while more := conn.recv(CHUNK):
                    total += len(more)
                conn.sendall(total.to_bytes(8, "big"))
            elif data[:1] == b"D":
                while len(data) < 9:
                    data += conn.recv(9 - len(data))
                left = int.from_bytes(data[1:9], "big")
                while left > 0:
                    left -= conn.send(block[: min(left, CHUNK)])
            else:
                while data:
                    conn.sendall(data)
                    data = conn.recv(CHUNK)
            conn.shutdown(socket.SHUT_WR)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def _cert(certdir: Path, name: str) -> WorkloadCert:
    return WorkloadCert.read(certdir / name)


async def _zt_server(port: int, certdir: Path) -> None:
    server = HboneServer(server_context(_cert(certdir, "server")), peer_check=client_peer_check(TD))
    await server.start(SocketAddr.parse(f"127.0.0.1:{port}"), reuse_port=True)
    gc.freeze()  # start-up objects out of the collector's way (fewer long gen-2 pauses)
    await asyncio.Event().wait()


async def _zt_client(port: int, server_port: int, authority: str, certdir: Path) -> None:
    cert = _cert(certdir, "client")
    ctx = client_context(cert)
    check = server_peer_check([SERVER])
    pool = HbonePool(lambda key: dial(key.destination, ctx, peer_check=check))
    key = PoolKey(CLIENT, frozenset({SERVER}), SocketAddr.parse(f"127.0.0.1:{server_port}"))
    forwarder = TcpToHbone.via(pool, key, SocketAddr.parse(authority))
    await forwarder.start(SocketAddr.parse(f"127.0.0.1:{port}"), reuse_port=True)
    gc.freeze()
    await asyncio.Event().wait()


# ---- the load generator ----------------------------------------------------------------------


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of the proxy processes (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def bulk(port: int, size: int) -> float:
    """Seconds to push `size` bytes through and read them back echoed (one connection)."""
    # Not "U"/"D" first: those select the target's sink/source modes (a random first byte did,
    # 1 time in 128, and the transfer then stalled or came back 8 bytes long).
    block = b"E" + os.urandom(CHUNK - 1)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        started = time.perf_counter()
        received = 0

        def reader() -> None:
            nonlocal received
            while data := sock.recv(CHUNK):
                received += len(data)

        thread = threading.Thread(target=reader)
        thread.start()
        for _ in range(size // CHUNK):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        thread.join(timeout=60)
        elapsed = time.perf_counter() - started
    if received != size:
        raise RuntimeError(f"bulk: echoed {received} of {size} bytes")
    return elapsed


def upload(port: int, size: int) -> float:
    """Seconds to push `size` bytes to the sink and hear its count back (one connection)."""
    block = b"U" + bytes(CHUNK - 1)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        started = time.perf_counter()
        for _ in range(size // CHUNK):
            sock.sendall(block)
            block = bytes(CHUNK)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 8 and (data := sock.recv(8)):
            answer += data
        elapsed = time.perf_counter() - started
    if int.from_bytes(answer, "big") != size:
        raise RuntimeError(f"upload: sink counted {answer!r}, sent {size}")
    return elapsed


def download(port: int, size: int) -> float:
    """Seconds to receive `size` bytes from the source (one connection)."""
    buf = bytearray(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        started = time.perf_counter()
        sock.sendall(b"D" + size.to_bytes(8, "big"))
        sock.shutdown(socket.SHUT_WR)
        received = 0
        while n := sock.recv_into(buf):
            received += n
        elapsed = time.perf_counter() - started
    if received != size:
        raise RuntimeError(f"download: got {received} of {size} bytes")
    return elapsed


def parallel_upload(port: int, size: int, conns: int) -> float:
    """Aggregate MB/s of `conns` concurrent uploads of `size` bytes each."""
    times: list[float] = []
    threads = [
        threading.Thread(target=lambda: times.append(upload(port, size))) for _ in range(conns)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started
    if len(times) != conns:
        raise RuntimeError(f"parallel upload: {len(times)} of {conns} finished")
    return conns * size / elapsed / 1e6


def ping_pong(port: int, count: int) -> list[float]:
    """Round-trip times (s) of `count` 64-byte messages on one connection."""
    msg = b"p" * 64
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(10)
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(msg)
            got = 0
            while got < 64:
                got += len(sock.recv(64 - got))
            out.append(time.perf_counter() - started)
    return out


def tunnels(port: int, seconds: float, limit: int) -> tuple[int, float]:
    """Sequential connect / 64 B echo / close for `seconds` (at most `limit`): (count, elapsed)."""
    msg = b"t" * 64
    count = 0
    started = time.perf_counter()
    while count < limit and time.perf_counter() - started < seconds:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(10)
            sock.sendall(msg)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while data := sock.recv(1024):
                got += data
            if got != msg:
                raise RuntimeError(f"tunnel echo: got {got!r}")
        count += 1
    return count, time.perf_counter() - started


def handshakes(port: int, ctx: ssl.SSLContext, seconds: float, limit: int) -> tuple[int, float]:
    """Full mTLS handshakes with the HBONE server, one at a time: (count, elapsed). Each waits
    for the server's first HTTP/2 bytes, which it sends only after checking our certificate."""
    count = 0
    started = time.perf_counter()
    while count < limit and time.perf_counter() - started < seconds:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.settimeout(10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall
            with ctx.wrap_socket(raw, server_hostname=None) as tls:
                tls.sendall(H2_PREFACE)
                if not tls.recv(1):
                    raise RuntimeError("HBONE server closed the connection after the handshake")
        count += 1
    return count, time.perf_counter() - started


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def idle_memory(port: int, pids: list[int], count: int) -> float:
    """Bytes of proxy RSS per idle tunnel: open `count` tunnels (each proven up by a 1-byte
    echo), measure, close them."""
    before = _rss(pids)
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.settimeout(10)
            socks.append(sock)
            sock.sendall(b"m")
            if sock.recv(1) != b"m":
                raise RuntimeError("idle tunnel did not echo")
        time.sleep(0.2)
        return (_rss(pids) - before) / count
    finally:
        for sock in socks:
            sock.close()


# ---- modes -----------------------------------------------------------------------------------


@dataclass
class Mode:
    name: str
    port: int
    pids: list[int]
    hbone_port: int | None = None  # the HBONE server, for handshakes/s
    workers_only: bool = False  # the N-worker zt pair: only the aggregate throughput
    servers: int = 1  # `pids` lists the HBONE server process(es) first, then the client(s)

    def cpu_sides(self) -> tuple[float, float]:
        """CPU seconds so far of (client side, server side)."""
        return _cpu(self.pids[self.servers :]), _cpu(self.pids[: self.servers])


@contextlib.contextmanager
def _process(args: list[str], cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _role(loop: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.hbone_bench", "--loop", loop, "--role", *args]


def _zt_pair(
    stack: contextlib.ExitStack, workdir: Path, target: int, workers: int, variant: Variant
) -> tuple[int, int, list[int]]:
    """`workers` zt server processes sharing one SO_REUSEPORT port, and as many zt clients
    sharing another, run from the variant's tree on its loop: (client port, server port, pids)."""
    tree, loop = variant.tree, variant.loop
    srv_port, cli_port = _free_port(), _free_port()
    pids = []
    for _ in range(workers):
        server = _role(loop, "zt-server", "--port", str(srv_port), "--certdir", str(workdir))
        pids.append(stack.enter_context(_process(server, tree)).pid)
    for _ in range(workers):
        client = _role(
            loop, "zt-client", "--port", str(cli_port), "--server-port", str(srv_port),
            "--authority", f"127.0.0.1:{target}", "--certdir", str(workdir),
        )  # fmt: skip
        pids.append(stack.enter_context(_process(client, tree)).pid)
    for port in (srv_port, cli_port):
        _wait_port(port)
    return cli_port, srv_port, pids


@dataclass(frozen=True)
class Variant:
    """A zt build to measure: the source tree its roles run from (None: this one) and its loop."""

    name: str
    tree: Path | None
    loop: str


def parse_variant(spec: str) -> Variant:
    """`NAME=LOOP` or `NAME=LOOP:TREE` (e.g. `zt_base=asyncio:/tmp/base`, a checkout of an older
    zt with this bench copied in): an extra zt pair measured in the same interleaved run."""
    name, sep, rest = spec.partition("=")
    loop, _, tree = rest.partition(":")
    if not sep or not name.startswith("zt_") or loop not in ("asyncio", "uvloop"):
        raise argparse.ArgumentTypeError(
            f"--variant: got {spec!r}, expected zt_<name>=asyncio|uvloop[:<tree>]"
        )
    return Variant(name, Path(tree) if tree else None, loop)


@contextlib.contextmanager
def setup(workdir: Path, workers: int, loop: str, variants: list[Variant]) -> Iterator[list[Mode]]:
    ca = CertificateAuthority.init(workdir / "ca", TD)
    now = time.time()
    files = {}
    for name, ident in (("server", SERVER), ("client", CLIENT)):
        pem, key, bundle = ca.issue(ident, now=now).write(workdir / name)
        files[name] = TlsFiles(pem, key, bundle)
    target = _free_port()
    ports = {n: _free_port() for n in ("envoy_srv", "envoy_cli")}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(_role(loop, "target", "--port", str(target))))
        _wait_port(target)
        srv = stack.enter_context(
            run_envoy(hbone_server_config(ports["envoy_srv"], files["server"], TD), workdir)
        )
        route = ClientRoute(
            "bench", ports["envoy_cli"], ports["envoy_srv"], f"127.0.0.1:{target}",
            files["client"], str(SERVER),
        )  # fmt: skip
        cli = stack.enter_context(run_envoy(hbone_client_config([route]), workdir))
        zt_cli, zt_srv, zt_pids = _zt_pair(stack, workdir, target, 1, Variant("zt", None, loop))
        modes = [
            Mode("direct", target, []),
            Mode("envoy", ports["envoy_cli"], [srv.proc.pid, cli.proc.pid], ports["envoy_srv"]),
            Mode("zt", zt_cli, zt_pids, zt_srv),
        ]
        for variant in variants:  # levers compared in the same run
            v_cli, _, v_pids = _zt_pair(stack, workdir, target, 1, variant)
            modes.append(Mode(variant.name, v_cli, v_pids))
        if workers > 1:
            many = Variant(f"zt_x{workers}", None, loop)
            many_cli, _, many_pids = _zt_pair(stack, workdir, target, workers, many)
            modes.append(
                Mode(f"zt_x{workers}", many_cli, many_pids, workers_only=True, servers=workers)
            )
        yield modes


def _measure(mode: Mode, args: argparse.Namespace, results: Results) -> None:
    r = results.setdefault(mode.name, {})

    def add(key: str, value: float) -> None:
        r.setdefault(key, []).append(value)

    size = args.bulk_mib << 20
    if mode.name == "zt" or mode.workers_only:
        # Same load (2 connections per worker of the N-worker pair) through 1 and N workers.
        add("workers_MB/s", parallel_upload(mode.port, size // 2, 2 * args.workers))
    if mode.workers_only:
        return
    (cli0, srv0) = mode.cpu_sides()
    elapsed = bulk(mode.port, size)
    (cli1, srv1) = mode.cpu_sides()
    add("MB/s", size / elapsed / 1e6)
    gigabytes = 2 * size / 1e9  # both directions crossed the proxies
    add("cpu_s_per_GB", (cli1 - cli0 + srv1 - srv0) / gigabytes)
    add("cpu_client_s_per_GB", (cli1 - cli0) / gigabytes)
    add("cpu_server_s_per_GB", (srv1 - srv0) / gigabytes)
    add("up_MB/s", size / upload(mode.port, size) / 1e6)
    add("down_MB/s", size / download(mode.port, size) / 1e6)
    rtts = sorted(ping_pong(mode.port, args.pings))
    add("p50_us", rtts[len(rtts) // 2] * 1e6)
    add("p99_us", rtts[int(len(rtts) * 0.99) - 1] * 1e6)
    cpu0 = _cpu(mode.pids)
    count, spent = tunnels(mode.port, args.tunnel_seconds, 100_000)
    cpu1 = _cpu(mode.pids)
    add("tunnels/s", count / spent)
    add("cpu_ms_per_tunnel", (cpu1 - cpu0) / max(count, 1) * 1e3)
    if mode.hbone_port is not None:
        count, spent = handshakes(mode.hbone_port, args.ctx, args.tunnel_seconds, 100_000)
        add("handshakes/s", count / spent)
        add("KiB_per_idle_tunnel", idle_memory(mode.port, mode.pids, args.idle) / 1024)


def _capture(count: int) -> dict[str, float]:
    """bench/capture_bench.py in its own process (root only: it builds netns and BPF links)."""
    if os.geteuid() != 0:
        print("capture comparison skipped: needs root", file=sys.stderr)
        return {}
    args = [sys.executable, "-m", "bench.capture_bench", "--count", str(count)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        print(f"capture comparison failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {}
    return parse_capture_lines(done.stdout)


def _report(results: Results, workers: int, capture: dict[str, float]) -> None:
    print()
    lines = [*table(results), "", *summary(results)]
    lines += [f"capture set-up µs/connection: {way} {us:.1f}" for way, us in capture.items()]
    for line in [*lines, "", *machine_lines(results, workers, capture)]:
        print(line)


def _run_role(args: argparse.Namespace) -> bool:
    """Run a subprocess role (target, zt-server, zt-client); False when this is the bench."""
    if args.role == "target":
        _target(args.port)
        return True
    if args.role not in ("zt-server", "zt-client"):
        return False
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415 (optional: imported only when asked for)

        uvloop.install()
    if args.role == "zt-server":
        asyncio.run(_zt_server(args.port, args.certdir))
    else:
        asyncio.run(_zt_client(args.port, args.server_port, args.authority, args.certdir))
    return True


def _default_loop() -> str:
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        return "asyncio"
    return "uvloop"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 2 minutes")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=_default_loop())
    parser.add_argument(
        "--variant", type=parse_variant, action="append", default=[],
        help="extra zt pair in the same run: zt_<name>=asyncio|uvloop[:<tree>] (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-capture", action="store_true", help="skip BPF vs iptables set-up")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--authority", default="", help=argparse.SUPPRESS)
    parser.add_argument("--certdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if _run_role(args):
        return
    args.reps = args.reps or (3 if args.quick else 5)
    args.bulk_mib = 32 if args.quick else 256
    args.pings = 500 if args.quick else 3000
    args.tunnel_seconds = 0.5 if args.quick else 3.0
    args.idle = 200 if args.quick else 500
    results: Results = {}
    print(f"zt loop: {args.loop}; workers: {args.workers}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zt-bench-")))
        modes = stack.enter_context(setup(tmp, args.workers, args.loop, args.variant))
        args.ctx = client_context(_cert(tmp, "client"))
        for mode in modes:  # warm-up: pooled connections, caches
            tunnels(mode.port, 0.2, 20)
        for rep in range(args.reps):
            for mode in modes if rep % 2 == 0 else modes[::-1]:  # interleaved, alternating order
                try:
                    _measure(mode, args, results)
                except (OSError, RuntimeError) as exc:  # a stall or a broken echo: count it
                    print(f"{mode.name} rep {rep + 1} failed: {exc!r}", file=sys.stderr)
                    results.setdefault(mode.name, {}).setdefault("failures", []).append(1.0)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    capture = {} if args.no_capture else _capture(500 if args.quick else 2000)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "capture": capture}, indent=1))
    _report(results, args.workers, capture)


if __name__ == "__main__":
    main()
