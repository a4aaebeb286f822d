"""`zt config check|dump`: validate and show a mesh file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from cli._common import reports_errors
from zt.config import load_file
from zt.config.dump import document

app = typer.Typer(help="Validate and show mesh config files.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="mesh file (YAML or JSON)")]


@app.command()
@reports_errors
def check(file: FileArg) -> None:
    """Exit 0 with a one-line summary, or 2 with every problem and its field path."""
    snap = load_file(file)
    nodes = sorted({w.node for w in snap.workloads if w.node})
    typer.echo(
        f"ok: {file}: {len(snap.workloads)} workloads on {len(nodes)} nodes, "
        f"{len(snap.services)} services, {len(snap.policies)} policies"
    )


@app.command()
@reports_errors
def dump(
    file: FileArg,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
) -> None:
    """Print the normalized snapshot (defaults filled in, identities derived)."""
    doc = document(load_file(file))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
