"""HBONE benchmark (not a test): direct TCP vs an Envoy client+server pair vs a zt client+server pair.

All on loopback, interleaved repetitions, medians (DESIGN.md §8). Each proxy runs in its own
process (Envoy with --concurrency 1; zt client and zt server as `--role` subprocesses of this
script); the load generator and the target server run in this process / a target subprocess.

    .venv/bin/python -m bench.hbone_bench [--quick] [--reps N]

Metrics: one-connection bulk throughput (MB/s, CPU s/GB of the proxy processes), 64 B ping-pong
latency p50/p99 (µs, added over direct), new tunnels per second on a pooled connection
(connect, 64 B echo, close; CPU ms per tunnel). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.interop.envoy import (
    ClientRoute,
    TlsFiles,
    hbone_client_config,
    hbone_server_config,
    run_envoy,
)
from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
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
    """Echo server (threads): echo until EOF, then FIN. Bulk uploads are echoed too, read back
    by the load generator and counted (both directions cross the proxies)."""
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(CHUNK):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def _cert(certdir: Path, name: str) -> WorkloadCert:
    return WorkloadCert.read(certdir / name)


async def _zt_server(port: int, certdir: Path) -> None:
    server = HboneServer(server_context(_cert(certdir, "server")), peer_check=client_peer_check(TD))
    await server.start(SocketAddr.parse(f"127.0.0.1:{port}"))
    gc.freeze()  # start-up objects out of the collector's way (fewer long gen-2 pauses)
    await asyncio.Event().wait()


async def _zt_client(port: int, server_port: int, authority: str, certdir: Path) -> None:
    cert = _cert(certdir, "client")
    ctx = client_context(cert)
    check = server_peer_check([SERVER])
    pool = HbonePool(lambda key: dial(key.destination, ctx, peer_check=check))
    key = PoolKey(CLIENT, frozenset({SERVER}), SocketAddr.parse(f"127.0.0.1:{server_port}"))
    dst = SocketAddr.parse(authority)
    request = ConnectRequest((dst.ip, dst.port))
    forwarder = TcpToHbone(lambda: pool.open(key, request))
    await forwarder.start(SocketAddr.parse(f"127.0.0.1:{port}"))
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
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
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


@contextlib.contextmanager
def _process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args)
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


def _role(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.hbone_bench", "--role", *args]


@contextlib.contextmanager
def setup(workdir: Path) -> Iterator[list[Mode]]:
    ca = CertificateAuthority.init(workdir / "ca", TD)
    now = time.time()
    files = {}
    for name, ident in (("server", SERVER), ("client", CLIENT)):
        pem, key, bundle = ca.issue(ident, now=now).write(workdir / name)
        files[name] = TlsFiles(pem, key, bundle)
    target = _free_port()
    ports = {n: _free_port() for n in ("envoy_srv", "envoy_cli", "zt_srv", "zt_cli")}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(_role("target", "--port", str(target))))
        _wait_port(target)
        srv = stack.enter_context(
            run_envoy(hbone_server_config(ports["envoy_srv"], files["server"], TD), workdir)
        )
        route = ClientRoute(
            "bench", ports["envoy_cli"], ports["envoy_srv"], f"127.0.0.1:{target}",
            files["client"], str(SERVER),
        )  # fmt: skip
        cli = stack.enter_context(run_envoy(hbone_client_config([route]), workdir))
        zsrv = stack.enter_context(
            _process(_role("zt-server", "--port", str(ports["zt_srv"]), "--certdir", str(workdir)))
        )
        zcli = stack.enter_context(
            _process(
                _role(
                    "zt-client", "--port", str(ports["zt_cli"]),
                    "--server-port", str(ports["zt_srv"]),
                    "--authority", f"127.0.0.1:{target}", "--certdir", str(workdir),
                )
            )
        )  # fmt: skip
        for port in (ports["zt_srv"], ports["zt_cli"]):
            _wait_port(port)
        yield [
            Mode("direct", target, []),
            Mode("envoy", ports["envoy_cli"], [srv.proc.pid, cli.proc.pid], ports["envoy_srv"]),
            Mode("zt", ports["zt_cli"], [zsrv.pid, zcli.pid], ports["zt_srv"]),
        ]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _measure(
    mode: Mode, args: argparse.Namespace, results: dict[str, dict[str, list[float]]]
) -> None:
    r = results.setdefault(mode.name, {})

    def add(key: str, value: float) -> None:
        r.setdefault(key, []).append(value)

    cpu0 = _cpu(mode.pids)
    elapsed = bulk(mode.port, args.bulk_mib << 20)
    cpu1 = _cpu(mode.pids)
    gb = 2 * (args.bulk_mib << 20) / 1e9  # both directions crossed the proxies
    add("MB/s", (args.bulk_mib << 20) / elapsed / 1e6)
    add("cpu_s_per_GB", (cpu1 - cpu0) / gb)
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


def _report(results: dict[str, dict[str, list[float]]]) -> None:
    metrics = ["MB/s", "cpu_s_per_GB", "p50_us", "p99_us", "tunnels/s", "cpu_ms_per_tunnel"]
    metrics += ["handshakes/s", "KiB_per_idle_tunnel"]
    print(f"\n{'mode':8}" + "".join(f"{m:>20}" for m in metrics))
    med = {mode: {m: _median(v.get(m, [])) for m in metrics} for mode, v in results.items()}
    for mode, values in med.items():
        print(f"{mode:8}" + "".join(f"{values[m]:>20.1f}" for m in metrics))
    d, e, z = med["direct"], med["envoy"], med["zt"]
    ratio: Callable[[float, float], float] = lambda a, b: a / b if b else float("nan")  # noqa: E731
    print("\nratios (zt / envoy; throughput and tunnels/s: higher is better for zt)")
    print(f"  throughput            zt/envoy {ratio(z['MB/s'], e['MB/s']):.2f}   "
          f"zt/direct {ratio(z['MB/s'], d['MB/s']):.3f}   envoy/direct "
          f"{ratio(e['MB/s'], d['MB/s']):.3f}")  # fmt: skip
    print(f"  added p50 latency µs  zt {z['p50_us'] - d['p50_us']:.0f}   "
          f"envoy {e['p50_us'] - d['p50_us']:.0f}   ratio "
          f"{ratio(z['p50_us'] - d['p50_us'], e['p50_us'] - d['p50_us']):.2f}")  # fmt: skip
    print(f"  added p99 latency µs  zt {z['p99_us'] - d['p99_us']:.0f}   "
          f"envoy {e['p99_us'] - d['p99_us']:.0f}   ratio "
          f"{ratio(z['p99_us'] - d['p99_us'], e['p99_us'] - d['p99_us']):.2f}")  # fmt: skip
    print(f"  new tunnels/s         zt/envoy {ratio(z['tunnels/s'], e['tunnels/s']):.2f}")
    print(f"  CPU s/GB              zt/envoy {ratio(z['cpu_s_per_GB'], e['cpu_s_per_GB']):.1f}")
    print(f"  handshakes/s          zt/envoy {ratio(z['handshakes/s'], e['handshakes/s']):.2f}")
    print(f"  memory/idle tunnel    zt/envoy "
          f"{ratio(z['KiB_per_idle_tunnel'], e['KiB_per_idle_tunnel']):.1f}")  # fmt: skip
    print(f"  CPU ms/tunnel         zt/envoy "
          f"{ratio(z['cpu_ms_per_tunnel'], e['cpu_ms_per_tunnel']):.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, well under 2 minutes")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--authority", default="", help=argparse.SUPPRESS)
    parser.add_argument("--certdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "target":
        _target(args.port)
        return
    if args.role == "zt-server":
        asyncio.run(_zt_server(args.port, args.certdir))
        return
    if args.role == "zt-client":
        asyncio.run(_zt_client(args.port, args.server_port, args.authority, args.certdir))
        return
    args.reps = args.reps or (3 if args.quick else 5)
    args.bulk_mib = 64 if args.quick else 256
    args.pings = 500 if args.quick else 3000
    args.tunnel_seconds = 1.0 if args.quick else 3.0
    args.idle = 200 if args.quick else 500
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="zt-bench-") as tmp, setup(Path(tmp)) as modes:
        args.ctx = client_context(_cert(Path(tmp), "client"))
        for mode in modes:  # warm-up: pooled connections, caches
            tunnels(mode.port, 0.2, 20)
        for rep in range(args.reps):
            for mode in modes if rep % 2 == 0 else modes[::-1]:  # interleaved, alternating order
                _measure(mode, args, results)
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)
    _report(results)


if __name__ == "__main__":
    main()
