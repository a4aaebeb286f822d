"""Loopback harness: a zt (or deliberately wrong) TLS server and client on 127.0.0.1 / ::1.

Each side records what its user would see: the peer identity on success, or the typed error.
Every wait is bounded; every server, connection and child process is closed in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from zt.identity import _suites
from zt.identity.certs import WorkloadCert
from zt.identity.handshake import client_handshake, server_handshake, tls_error
from zt.identity.spiffe import SpiffeId

T = TypeVar("T")
TIMEOUT = 5.0
Result = SpiffeId | BaseException | None


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())


@dataclass
class Side:
    result: Result = None
    read: bytes | BaseException | None = None
    cipher: str | None = None
    version: str | None = None
    has_ticket: bool | None = None


@dataclass
class Outcome:
    server: Side = field(default_factory=Side)
    client: Side = field(default_factory=Side)


def _note(side: Side, writer: asyncio.StreamWriter) -> None:
    obj = writer.get_extra_info("ssl_object")
    if isinstance(obj, ssl.SSLObject):
        cipher = obj.cipher()
        side.cipher = cipher[0] if cipher else None
        side.version = obj.version()


@contextlib.asynccontextmanager
async def zt_server(
    ctx: ssl.SSLContext, trust_domain: str, host: str, out: Side
) -> AsyncIterator[int]:
    """A zt HBONE-side TLS server: handshake, check the client, greet it with its principal."""
    done = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            out.result = await server_handshake(w, ctx, trust_domain, timeout=TIMEOUT)
            _note(out, w)
            w.write(b"hello " + out.result.principal.encode() + b"\n")
            await w.drain()
        except Exception as exc:
            out.result = exc
        finally:
            w.close()
            done.set()

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
        await asyncio.wait_for(done.wait(), TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()


async def zt_client(
    ctx: ssl.SSLContext,
    expected: Sequence[SpiffeId | str],
    host: str,
    port: int,
    out: Side,
    *,
    greeted: bool = True,
) -> None:
    """A zt TLS client: handshake, check the server, read the greeting (or the refusal) when the
    server sends one."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    try:
        out.result = await client_handshake(writer, ctx, expected, timeout=TIMEOUT)
        _note(out, writer)
        if not greeted:
            return
        try:
            out.read = await asyncio.wait_for(reader.readline(), TIMEOUT)
        except (ssl.SSLError, OSError) as exc:
            out.read = tls_error(exc, peer="server")
        obj = writer.get_extra_info("ssl_object")
        if isinstance(obj, ssl.SSLObject) and obj.session is not None:
            out.has_ticket = obj.session.has_ticket
    except Exception as exc:
        out.result = exc
    finally:
        writer.close()


async def exchange(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    expected: Sequence[SpiffeId | str],
    *,
    trust_domain: str = "cluster.local",
    host: str = "127.0.0.1",
) -> Outcome:
    """zt server <-> zt client over real loopback sockets."""
    out = Outcome()
    async with zt_server(server_ctx, trust_domain, host, out.server) as port:
        await zt_client(client_ctx, expected, host, port, out.client)
    return out


@contextlib.asynccontextmanager
async def plain_server(ctx: ssl.SSLContext, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A non-zt TLS server (asyncio does the handshake with whatever `ctx` allows)."""

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(b"hello from a plain server\n")
            await w.drain()
        finally:
            w.close()

    server = await asyncio.start_server(handle, host, 0, ssl=ctx, ssl_handshake_timeout=TIMEOUT)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _load(ctx: ssl.SSLContext, cert: WorkloadCert, directory: Path) -> None:
    prefix = directory / "peer"
    pem, key, _ = cert.write(prefix)
    ctx.load_cert_chain(pem, key)


def peer_context(
    side: str,
    *,
    roots: bytes,
    cert: WorkloadCert | None = None,
    alpn: Sequence[str] | None = ("h2",),
    tls12_only: bool = False,
    suites: tuple[str, ...] | None = None,
) -> ssl.SSLContext:
    """A deliberately non-zt peer: any subset of zt's rules can be broken."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED if side == "client" else ssl.CERT_NONE
    ctx.load_verify_locations(cadata=roots.decode())
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    if suites is not None:
        _suites.set_tls13_suites(ctx, suites)
    if cert is not None:
        with tempfile.TemporaryDirectory() as tmp:
            _load(ctx, cert, Path(tmp))
    return ctx


@dataclass
class OpenSslPeer:
    """What an `openssl s_client` run printed."""

    returncode: int
    output: str


async def s_client(
    port: int, files: dict[str, Path], *extra: str, host: str = "127.0.0.1"
) -> OpenSslPeer:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    args = ["openssl", "s_client", "-connect", target, "-CAfile", str(files["bundle"])]
    args += ["-cert", str(files["cert"]), "-key", str(files["key"]), *extra]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return OpenSslPeer(proc.returncode, out.decode(errors="replace"))


@contextlib.asynccontextmanager
async def s_server(files: dict[str, Path], *extra: str) -> AsyncIterator[int]:
    """`openssl s_server` on 127.0.0.1, one connection, requiring a client certificate."""
    args = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1"]
    args += ["-cert", str(files["cert"]), "-key", str(files["key"])]
    args += ["-CAfile", str(files["bundle"]), "-Verify", "1", *extra]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        port = 0
        while not port:
            line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
            assert line, "openssl s_server exited before accepting"
            if line.startswith(b"ACCEPT "):
                port = int(line.rsplit(b":", 1)[1])
        yield port
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
