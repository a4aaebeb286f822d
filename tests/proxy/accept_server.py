"""A server process for tests/proxy/test_accept.py: an HBONE server (TLS, `HboneServer.start`) or
a plaintext echo listener behind `AcceptLoop`, on asyncio or uvloop, optionally with a lowered
RLIMIT_NOFILE. Measured from outside (/proc/PID: RSS, fds, CPU time; stderr bytes).

Prints one JSON line when listening: {"port": P, "echo": E}. Each line "stats" on stdin is
answered with one JSON line of the accept counters; EOF on stdin ends the process.

`--legacy` serves TLS with `loop.create_server` as zt did before `zt.proxy.accept` (for the
before/after figures in the report)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
import socket
import sys
import threading
from pathlib import Path

from zt.addr import SocketAddr
from zt.identity.certs import WorkloadCert
from zt.identity.tls import server_context
from zt.proxy.accept import (
    AcceptLimits,
    AcceptLoop,
    AcceptMetrics,
    ConnectionGroup,
    install_exception_handler,
    serve_streams,
)
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _listener() -> tuple[int, socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock.getsockname()[1], sock


async def main(args: argparse.Namespace) -> None:
    metrics = AcceptMetrics()
    if not args.legacy:
        install_exception_handler(metrics=metrics)
    limits = AcceptLimits(
        handshake_timeout=args.handshake_timeout,
        half_open_per_source=args.per_source,
        half_open_total=args.total,
        max_connections=args.max_connections,
    )
    loop = asyncio.get_running_loop()
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    server: HboneServer | None = None
    plain: AcceptLoop | None = None
    if args.mode == "tls":
        cert = WorkloadCert.read(Path(args.cert))
        server = HboneServer(
            server_context(cert), peer_check=client_peer_check(cert.identity.trust_domain)
        )
        if args.legacy:
            legacy = await loop.create_server(
                server._make_driver, "127.0.0.1", 0, ssl=server._context, backlog=1024
            )
            port = legacy.sockets[0].getsockname()[1]
        else:
            listen = SocketAddr(ipaddress.ip_address("127.0.0.1"), 0)
            bound = await server.start(listen, limits=limits, metrics=metrics)
            port = bound.port
    else:
        port, sock = _listener()
        if args.legacy:
            await asyncio.start_server(echo, sock=sock)
        else:
            plain = AcceptLoop(
                sock, serve_streams(echo), group=ConnectionGroup("plain", limits), metrics=metrics
            )
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    print(json.dumps({"port": port, "echo": echo_port}), flush=True)

    done = asyncio.Event()

    def report() -> None:
        counts = dict(metrics.counts)
        if plain is not None:
            counts["open"] = plain.group.open
        if server is not None and isinstance(server._server, AcceptLoop):
            counts["open"] = server._server.group.open
        print(json.dumps(counts), flush=True)

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                loop.call_soon_threadsafe(report)
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=read_stdin, daemon=True).start()
    await done.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("tls", "plain"), default="tls")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--cert", default="")
    parser.add_argument("--legacy", action="store_true")
    parser.add_argument("--handshake-timeout", type=float, default=5.0)
    parser.add_argument("--per-source", type=int, default=64)
    parser.add_argument("--total", type=int, default=256)
    parser.add_argument("--max-connections", type=int, default=8192)
    parser.add_argument("--nofile", type=int, default=0)
    ns = parser.parse_args()
    if ns.loop == "uvloop":
        import uvloop

        uvloop.run(main(ns))
    else:
        asyncio.run(main(ns))
