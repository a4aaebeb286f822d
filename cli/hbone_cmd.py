"""`zt hbone`: a standalone HBONE server and an nc-like HBONE client, for debugging real nodes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import signal
from pathlib import Path
from typing import Annotated

import typer

from zt.addr import SocketAddr
from zt.errors import UsageError
from zt.hbone.request import ConnectRequest
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy.accept import DEFAULT_LIMITS, AcceptLimits, install_exception_handler
from zt.proxy.client import dial, open_tunnel
from zt.proxy.errors import StreamResetError, TunnelRefused
from zt.proxy.guard import StandaloneAdmission
from zt.proxy.server import HboneServer
from zt.proxy.stdio import pump_stdio
from zt.proxy.tls import client_peer_check, server_peer_check
from zt.state.loopguard import ALLOW_FORM, AllowList

from ._common import reports_errors

app = typer.Typer(help="HBONE debugging: a standalone server and an nc-like client.")

# `zt hbone connect` exit statuses: 0 = tunnel up and closed cleanly; otherwise these.
EXIT_BY_STATUS = {400: 3, 401: 4, 403: 4, 503: 5}
EXIT_OTHER_STATUS = 6
EXIT_RESET = 8

CertOpt = Annotated[Path, typer.Option(help="PEM certificate (leaf, then intermediates)")]
KeyOpt = Annotated[Path, typer.Option(help="PEM private key")]
CaOpt = Annotated[Path, typer.Option(help="PEM trust bundle (mesh roots)")]


def _load_cert(cert: Path, key: Path, ca: Path) -> WorkloadCert:
    return WorkloadCert.from_pem(
        _read(cert, "--cert"), _read(key, "--key"), _read(ca, "--ca"), what=str(cert)
    )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _listen_addr(text: str) -> SocketAddr:
    """`ADDR:PORT`, where port 0 (unlike in a destination) means "pick one"."""
    if text.endswith(":0"):
        base = SocketAddr.parse(text[:-1] + "1", field="--listen")
        return SocketAddr(base.ip, 0)
    return SocketAddr.parse(text, field="--listen")


@app.command()
@reports_errors
def serve(
    *,
    listen: Annotated[str, typer.Option(help="ADDR:PORT to listen on (port 0: any)")],
    cert: CertOpt,
    key: KeyOpt,
    ca: CaOpt,
    trust_domain: Annotated[
        str | None, typer.Option(help="accepted client trust domain (default: the cert's)")
    ] = None,
    drain: Annotated[float, typer.Option(help="GOAWAY drain deadline on SIGTERM, s")] = 5.0,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            help=f"destinations tunnels may reach, repeatable: {ALLOW_FORM}. Default: anything "
            "but loopback; loopback only when an --allow inside 127.0.0.0/8 or ::1 names it"
        ),
    ] = None,
    handshake_timeout: Annotated[
        float, typer.Option(help="seconds a new connection has to complete TLS, s")
    ] = DEFAULT_LIMITS.handshake_timeout,
) -> None:
    """Forward each tunnel to its `:authority`. Prints `listening on ADDR` to stderr.

    Refused before any dial: a CONNECT to this server itself or to a port zt listens on
    (15001, 15006, 15008, 15000, ...) at an address of this host (400), and one outside --allow
    (401). Example: `--allow 10.0.0.0/8 --allow 127.0.0.1:8080` (a pod network, plus one local
    test server)."""
    workload = _load_cert(cert, key, ca)
    address = _listen_addr(listen)
    admission = StandaloneAdmission(AllowList.parse(allow or [], flag="--allow"))
    td = trust_domain or workload.identity.trust_domain
    limits = dataclasses.replace(DEFAULT_LIMITS, handshake_timeout=handshake_timeout)
    asyncio.run(_serve(workload, address, td, drain, admission, limits))


async def _serve(
    workload: WorkloadCert,
    listen: SocketAddr,
    td: str,
    drain: float,
    admission: StandaloneAdmission,
    limits: AcceptLimits,
) -> None:
    install_exception_handler()  # a failing callback is one counted, rate-limited log line
    server = HboneServer(
        server_context(workload), peer_check=client_peer_check(td), admission=admission
    )
    bound = await server.start(listen, limits=limits)
    admission.bind(bound)
    gc.freeze()  # start-up objects out of the collector's way (fewer long gen-2 pauses)
    typer.echo(f"zt: listening on {bound} as {workload.identity}", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown(drain)


@app.command()
@reports_errors
def connect(
    *,
    via: Annotated[str, typer.Option(help="HBONE server ADDR:PORT")],
    authority: Annotated[str, typer.Option(help="tunnel destination IP:PORT ([v6]:PORT)")],
    cert: CertOpt,
    key: KeyOpt,
    ca: CaOpt,
    expect_san: Annotated[list[str], typer.Option(help="accepted server SPIFFE id (repeatable)")],
) -> None:
    """Carry stdin/stdout through one tunnel (like nc). Exit 0 when the CONNECT got 200 and the
    tunnel closed cleanly; 3/4/5/6 for CONNECT 400/401/503/other; 8 when the tunnel was reset."""
    workload = _load_cert(cert, key, ca)
    target = SocketAddr.parse(via, field="--via")
    dst = SocketAddr.parse(authority, field="--authority")
    expected = [SpiffeId.parse(s) for s in expect_san]
    code = asyncio.run(_connect(workload, target, dst, expected))
    raise typer.Exit(code)


async def _connect(
    workload: WorkloadCert, via: SocketAddr, dst: SocketAddr, expected: list[SpiffeId]
) -> int:
    driver = await dial(via, client_context(workload), peer_check=server_peer_check(expected))
    try:
        try:
            stream = await open_tunnel(driver, ConnectRequest((dst.ip, dst.port)))
        except TunnelRefused as exc:
            typer.echo(f"zt: CONNECT {dst} via {via}: {exc.status} {exc.detail}", err=True)
            return EXIT_BY_STATUS.get(exc.status, EXIT_OTHER_STATUS)
        typer.echo(f"zt: CONNECT {dst} via {via}: 200", err=True)
        try:
            await pump_stdio(stream)
        except StreamResetError as exc:
            typer.echo(f"zt: tunnel reset: {exc}", err=True)
            return EXIT_RESET
        return 0
    finally:
        driver.start_drain(0.0)
        driver.close("done", abort=False)
