"""`zt authz check`: what would policy decide for a connection."""

import json
from pathlib import Path
from typing import Annotated

import typer

from zt.addr import SocketAddr

from . import _values
from ._common import reports_errors, sub_app

app = sub_app("Evaluate authorization policies.")


@app.command()
@reports_errors
def check(
    config: Annotated[Path, typer.Option(help="mesh file", exists=True, dir_okay=False)],
    src_ip: Annotated[str, typer.Option(help="source IP of the connection", parser=_values.ip)],
    dst: Annotated[
        SocketAddr,
        typer.Option(
            help="destination ip:port or [ipv6]:port", parser=_values.address, metavar="ADDR:PORT"
        ),
    ],
    src_identity: Annotated[
        str | None,
        typer.Option(
            help="peer SPIFFE id, spiffe://<td>/ns/<ns>/sa/<sa> (omit for plaintext)",
            parser=_values.spiffe_id,
        ),
    ] = None,
    network: Annotated[str, typer.Option(help="network of the destination")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Print ALLOW or DENY, the deciding policy and the reason; exit 0 for allow, 1 for deny.

    \b
    Example:
      zt authz check --config examples/mesh.yaml --src-ip 10.1.0.2 --dst [fd00:2::3]:8080 \\
        --src-identity spiffe://cluster.local/ns/default/sa/frontend
    """
    from zt.addr import parse_ip  # noqa: PLC0415
    from zt.config import load_file  # noqa: PLC0415
    from zt.state import Connection, authorize  # noqa: PLC0415

    conn = Connection(
        src_ip=parse_ip(src_ip, field="--src-ip"),
        dst=dst,
        src_identity=src_identity,
        network=network,
    )
    decision = authorize(conn, load_file(config))
    if as_json:
        doc = {
            "verdict": decision.verdict,
            "policy": decision.policy,
            "reason": decision.reason,
            "dry_run": [
                {"policy": d.policy, "action": d.action, "matched": d.matched}
                for d in decision.dry_run
            ],
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(decision.verdict)
        typer.echo(f"policy: {decision.policy or '-'}")
        typer.echo(f"reason: {decision.reason}")
        for d in decision.dry_run:
            match = "matched" if d.matched else "no match"
            typer.echo(f"dry-run: {d.policy} ({d.action}) {match}")
    raise typer.Exit(0 if decision.allowed else 1)
