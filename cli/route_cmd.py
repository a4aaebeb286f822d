"""`zt route`: where would an outbound connection go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zt.addr import SocketAddr
from zt.config import load_file
from zt.errors import NotFoundError
from zt.state import own_ips, route

from ._common import reports_errors


@reports_errors
def command(
    config: Annotated[Path, typer.Option(help="mesh file")],
    src: Annotated[str, typer.Option(help="uid of the source workload")],
    dst: Annotated[str, typer.Option(help="original destination ip:port or [ipv6]:port")],
    seed: Annotated[int, typer.Option(help="endpoint choice seed (deterministic)")] = 0,
) -> None:
    """Print the Route as JSON: kind, next_hop, authority, expected_identities, reason."""
    snapshot = load_file(config)
    source = snapshot.by_uid.get(src)
    if source is None:
        raise NotFoundError(f"--src: got {src!r}, expected the uid of a workload in {config}")
    # zt's ports are refused towards loopback and towards the source node's own pods, where zt
    # listens (the loop guard): the same addresses the node passes.
    own = own_ips(snapshot, source.node)
    decided = route(SocketAddr.parse(dst, field="--dst"), source, snapshot, seed=seed, own_ips=own)
    typer.echo(json.dumps(decided.to_dict(), indent=2))
