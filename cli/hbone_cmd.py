"""`zt hbone`: a standalone HBONE server and an nc-like HBONE client, for debugging real nodes."""

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from zt.addr import Destination, SocketAddr, parse_destination
from zt.errors import UsageError

from . import _values
from ._common import reports_errors, sub_app
from ._defaults import ALLOW_FORM, HANDSHAKE_TIMEOUT, KTLS, SPLICE

if TYPE_CHECKING:  # the command bodies import these: `zt --help` loads no TLS, h2 or asyncio code
    from zt.identity.certs import WorkloadCert
    from zt.identity.spiffe import SpiffeId
    from zt.proxy.accept import AcceptLimits
    from zt.proxy.guard import StandaloneAdmission

app = sub_app("HBONE debugging: a standalone server and an nc-like client.")

# `zt hbone connect` exit statuses: 0 = tunnel up and closed cleanly; otherwise these.
EXIT_BY_STATUS = {400: 3, 401: 4, 403: 4, 503: 5}
EXIT_OTHER_STATUS = 6
EXIT_RESET = 8

KtlsOpt = Annotated[
    Literal["auto", "on", "off"],
    typer.Option(help="kernel TLS (kTLS) for the transmit side, as `zt run --ktls`"),
]
SpliceOpt = Annotated[
    bool,
    typer.Option(help="splice(2) DATA payloads into kTLS sockets, as `zt run --splice`"),
]
CertOpt = Annotated[
    Path,
    typer.Option(help="PEM certificate (leaf, then intermediates)", exists=True, dir_okay=False),
]
KeyOpt = Annotated[Path, typer.Option(help="PEM private key", exists=True, dir_okay=False)]
BundleOpt = Annotated[
    Path,
    typer.Option("--bundle", help="PEM trust bundle (mesh roots)", exists=True, dir_okay=False),
]


def _load_cert(cert: Path, key: Path, bundle: Path) -> "WorkloadCert":
    from zt.identity.certs import WorkloadCert  # noqa: PLC0415

    return WorkloadCert.from_pem(
        _read(cert, "--cert"), _read(key, "--key"), _read(bundle, "--bundle"), what=str(cert)
    )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None


@app.command()
@reports_errors
def serve(
    *,
    listen: Annotated[
        SocketAddr,
        typer.Option(
            help="ADDR:PORT or [IPV6]:PORT to listen on (port 0: any)",
            parser=_values.listen_address,
            metavar="ADDR:PORT",
        ),
    ],
    cert: CertOpt,
    key: KeyOpt,
    bundle: BundleOpt,
    trust_domain: Annotated[
        str | None,
        typer.Option(
            help="accepted client trust domain (default: the cert's)",
            parser=_values.trust_domain,
        ),
    ] = None,
    drain: Annotated[float, typer.Option(help="GOAWAY drain deadline on SIGTERM, s", min=0)] = 5.0,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            help=f"destinations tunnels may reach, repeatable: {ALLOW_FORM}. Default: anything "
            "but loopback; loopback only when an --allow inside 127.0.0.0/8 or ::1 names it",
            parser=_values.allow_rule,
            metavar="CIDR[:PORTS]",
        ),
    ] = None,
    handshake_timeout: Annotated[
        float,
        typer.Option(help="seconds a new connection has to complete TLS, s", min=0.001),
    ] = HANDSHAKE_TIMEOUT,
    ktls: KtlsOpt = KTLS,
    splice: SpliceOpt = SPLICE,
) -> None:
    """Forward each tunnel to its `:authority`. Prints `listening on ADDR` to stderr, and one
    line for each client it refuses (TLS handshake, peer identity, loop guard, limits).

    Refused before any dial: a CONNECT to this server itself or to a port zt listens on
    (15001, 15006, 15008, 15000, ...) at an address of this host (400), and one outside --allow
    (401).

    \b
    Example: a pod network, plus one local test server
      zt hbone serve --listen [::1]:15008 --cert node.pem --key node.key --bundle bundle.pem \\
        --allow 10.0.0.0/8 --allow 127.0.0.1:8080
    """
    import asyncio  # noqa: PLC0415
    import dataclasses  # noqa: PLC0415

    from zt.proxy import ktls as ktls_mode  # noqa: PLC0415
    from zt.proxy import zerocopy  # noqa: PLC0415
    from zt.proxy.accept import DEFAULT_LIMITS  # noqa: PLC0415
    from zt.proxy.guard import StandaloneAdmission  # noqa: PLC0415
    from zt.state.loopguard import AllowList  # noqa: PLC0415

    ktls_mode.configure(ktls)
    zerocopy.configure(splice)
    admission = StandaloneAdmission(AllowList.parse(allow or [], flag="--allow"))
    workload = _load_cert(cert, key, bundle)
    td = trust_domain or workload.identity.trust_domain
    limits = dataclasses.replace(DEFAULT_LIMITS, handshake_timeout=handshake_timeout)
    asyncio.run(_serve(workload, listen, td, drain, admission, limits))


async def _serve(
    workload: "WorkloadCert",
    listen: SocketAddr,
    td: str,
    drain: float,
    admission: "StandaloneAdmission",
    limits: "AcceptLimits",
) -> None:
    import asyncio  # noqa: PLC0415
    import gc  # noqa: PLC0415

    from zt.identity.tls import server_context  # noqa: PLC0415
    from zt.proxy.accept import install_exception_handler  # noqa: PLC0415
    from zt.proxy.inbound import InboundFlow  # noqa: PLC0415
    from zt.proxy.server import HboneServer  # noqa: PLC0415
    from zt.proxy.tls import client_peer_check  # noqa: PLC0415

    install_exception_handler()  # a failing callback is one counted, rate-limited log line
    _log_refusals()
    server = HboneServer(
        server_context(workload), peer_check=client_peer_check(td), flow=InboundFlow(admission)
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


def _log_refusals() -> None:
    """zt.proxy's warnings on stderr, and the INFO lines of the accept loop and the server: one
    for each refused client, with its address and the reason (at accept: limits; TLS handshake
    failure or timeout; peer identity; a CONNECT the loop guard or --allow refuses), each
    rate-limited per client and reason. The driver's per-stream INFO lines stay off: a flood of
    reset streams must not become a flood of lines."""
    import logging  # noqa: PLC0415

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("zt: %(message)s"))
    proxy = logging.getLogger("zt.proxy")
    proxy.addHandler(handler)
    proxy.setLevel(logging.WARNING)
    for name in ("zt.proxy.accept", "zt.proxy.server", "zt.proxy.inbound"):
        logging.getLogger(name).setLevel(logging.INFO)


@app.command()
@reports_errors
def connect(
    *,
    via: Annotated[
        SocketAddr,
        typer.Option(
            help="HBONE server ADDR:PORT or [IPV6]:PORT",
            parser=_values.address,
            metavar="ADDR:PORT",
        ),
    ],
    authority: Annotated[
        str,
        typer.Option(
            help="tunnel destination IP:PORT, [IPV6]:PORT or a service or workload HOSTNAME:PORT"
            " (the server resolves it)",
            parser=_values.destination,
            metavar="ADDR:PORT",
        ),
    ],
    cert: CertOpt,
    key: KeyOpt,
    bundle: BundleOpt,
    expect_san: Annotated[
        list[str],
        typer.Option(
            help="accepted server SPIFFE id, spiffe://<td>/ns/<ns>/sa/<sa> (repeatable)",
            parser=_values.spiffe_id,
            metavar="SPIFFE_ID",
        ),
    ],
    ktls: KtlsOpt = KTLS,
    splice: SpliceOpt = SPLICE,
) -> None:
    """Carry stdin/stdout through one tunnel (like nc). Exit 0 when the CONNECT got 200 and the
    tunnel closed cleanly; 3/4/5/6 for CONNECT 400/401/503/other; 8 when the tunnel was reset.

    \b
    Example:
      echo hi | zt hbone connect --via [::1]:15008 --authority 10.0.0.5:8080 \\
        --cert pod.pem --key pod.key --bundle bundle.pem \\
        --expect-san spiffe://cluster.local/ns/default/sa/echo
    """
    import asyncio  # noqa: PLC0415

    from zt.identity.spiffe import SpiffeId  # noqa: PLC0415
    from zt.proxy import ktls as ktls_mode  # noqa: PLC0415
    from zt.proxy import zerocopy  # noqa: PLC0415

    ktls_mode.configure(ktls)
    zerocopy.configure(splice)
    expected = [SpiffeId.parse(s) for s in expect_san]
    workload = _load_cert(cert, key, bundle)
    code = asyncio.run(_connect(workload, via, parse_destination(authority), expected))
    raise typer.Exit(code)


async def _connect(
    workload: "WorkloadCert", via: SocketAddr, dst: Destination, expected: list["SpiffeId"]
) -> int:
    from zt.hbone.request import ConnectRequest  # noqa: PLC0415
    from zt.identity.tls import client_context  # noqa: PLC0415
    from zt.proxy.client import dial, open_tunnel  # noqa: PLC0415
    from zt.proxy.errors import StreamResetError, TunnelRefused  # noqa: PLC0415
    from zt.proxy.stdio import pump_stdio  # noqa: PLC0415
    from zt.proxy.tls import server_peer_check  # noqa: PLC0415

    driver = await dial(via, client_context(workload), peer_check=server_peer_check(expected))
    try:
        try:
            stream = await open_tunnel(driver, ConnectRequest(dst))
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
