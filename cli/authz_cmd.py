"""`zt authz check`: what would policy decide for a connection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zt.addr import SocketAddr, parse_ip
from zt.config import load_file
from zt.state import Connection, authorize

from ._common import reports_errors

app = typer.Typer(help="Evaluate authorization policies.", no_args_is_help=True)


@app.command()
@reports_errors
def check(
    config: Annotated[Path, typer.Option(help="mesh file")],
    src_ip: Annotated[str, typer.Option(help="source IP of the connection")],
    dst: Annotated[str, typer.Option(help="destination ip:port or [ipv6]:port")],
    src_identity: Annotated[
        str | None, typer.Option(help="peer SPIFFE id (omit for plaintext)")
    ] = None,
    network: Annotated[str, typer.Option(help="network of the destination")] = "",
) -> None:
    """Print ALLOW or DENY, the deciding policy and the reason; exit 0 for allow, 1 for deny."""
    conn = Connection(
        src_ip=parse_ip(src_ip, field="--src-ip"),
        dst=SocketAddr.parse(dst, field="--dst"),
        src_identity=src_identity,
        network=network,
    )
    decision = authorize(conn, load_file(config))
    typer.echo(decision.verdict)
    typer.echo(f"policy: {decision.policy or '-'}")
    typer.echo(f"reason: {decision.reason}")
    for d in decision.dry_run:
        typer.echo(f"dry-run: {d.policy} ({d.action}) {'matched' if d.matched else 'no match'}")
    raise typer.Exit(0 if decision.allowed else 1)
