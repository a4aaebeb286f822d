"""`zt route`: where would an outbound connection go."""

import json
from pathlib import Path
from typing import Annotated

import typer

from zt.addr import HostPort, parse_destination

from . import _values
from ._common import reports_errors


@reports_errors
def command(
    config: Annotated[Path, typer.Option(help="mesh file", exists=True, dir_okay=False)],
    src: Annotated[str, typer.Option(help="uid of the source workload", parser=_values.uid)],
    dst: Annotated[
        str,
        typer.Option(
            help="original destination ip:port or [ipv6]:port, or a mesh hostname:port"
            " (a service's or a workload's, short forms and search suffixes as the pod's DNS)",
            parser=_values.destination,
            metavar="ADDR:PORT",
        ),
    ],
    seed: Annotated[int, typer.Option(help="endpoint choice seed (deterministic)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Print the Route: kind, next_hop, authority, expected_identities, reason; for a hostname,
    first the address it resolved to (`resolved`).

    \b
    Example:
      zt route --config examples/mesh.yaml --src default/pod-a1 --dst 10.96.0.10:80 --json
      zt route --config examples/mesh.yaml --src default/pod-a1 --dst echo:80
    """
    from zt.config import load_file  # noqa: PLC0415
    from zt.errors import NotFoundError  # noqa: PLC0415
    from zt.state import own_ips, resolve, route  # noqa: PLC0415

    snapshot = load_file(config)
    source = snapshot.by_uid.get(src)
    if source is None:
        raise NotFoundError(f"--src: got {src!r}, expected the uid of a workload in {config}")
    # zt's ports are refused towards loopback and towards the source node's own pods, where zt
    # listens (the loop guard): the same addresses the node passes.
    own = own_ips(snapshot, source.node)
    shown: dict[str, object] = {}
    destination = parse_destination(dst)
    # a name: first the address the source pod's DNS would answer (zt/state/hostnames.py)
    if isinstance(destination, HostPort):
        resolved = resolve(snapshot, destination, source, seed=seed, field="--dst")
        shown["resolved"] = {
            "name": str(destination),
            "address": str(resolved.destination),
            "how": resolved.how,
        }
        destination = resolved.destination
    decided = shown | route(destination, source, snapshot, seed=seed, own_ips=own).to_dict()
    if as_json:
        typer.echo(json.dumps(decided, indent=2))
        return
    for key, value in decided.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else value
        if isinstance(value, dict):  # resolved: one line, `name -> address (how)`
            text = f"{value['name']} -> {value['address']} ({value['how']})"
        typer.echo(f"{key}: {'-' if text in (None, '') else text}")
