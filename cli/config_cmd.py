"""`zt config check|dump|push|get|diff`: validate and show a mesh file; keep it in etcd.

`-` as FILE reads the document from stdin. push/get/diff take the shared etcd flags
(cli/_etcd.py); docs/fleet.md describes the keys a push writes and how conflicts are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from zt.config import load_file, load_text
from zt.config.dump import document
from zt.fleet import push as mesh_push
from zt.fleet.push import MeshText
from zt.state.snapshot import Snapshot

from ._common import reports_errors
from ._etcd import (
    DEFAULT_PREFIX,
    CacertOpt,
    CertOpt,
    EtcdOpt,
    KeyOpt,
    PasswordFileOpt,
    PrefixOpt,
    UserOpt,
    settings_from,
    with_client,
)

app = typer.Typer(
    help="Validate and show mesh config files; push them to etcd.", no_args_is_help=True
)

FileArg = Annotated[Path, typer.Argument(help="mesh file (YAML or JSON); - reads stdin")]


def _load(file: Path) -> Snapshot:
    mesh = mesh_push.read_input(str(file))
    return load_text(mesh.text, mesh.source) if isinstance(mesh, MeshText) else load_file(mesh)


@app.command()
@reports_errors
def check(file: FileArg) -> None:
    """Exit 0 with a one-line summary, or 2 with every problem and its field path."""
    snap = _load(file)
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
    doc = document(_load(file))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


# --- etcd ---------------------------------------------------------------------------------------


@app.command()
@reports_errors
def push(
    file: FileArg,
    etcd: EtcdOpt,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Validate FILE like `check`, then write what changed to etcd in one txn. Exit 3 when the
    mesh changed in etcd meanwhile (nothing written: diff and push again)."""
    settings = settings_from(
        etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, etcd_prefix
    )
    mesh = mesh_push.read_input(str(file))
    result = with_client(settings, lambda c: mesh_push.push(c, settings.prefix, mesh))
    if result.diff.empty:
        typer.echo(f"no change: etcd already holds {file} (revision {result.revision})")
    else:
        typer.echo(f"pushed {file}: {result.diff.summary()} (revision {result.revision})")


@app.command()
@reports_errors
def get(
    etcd: EtcdOpt,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML")] = False,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print the mesh held in etcd, and the revision it was read at."""
    settings = settings_from(
        etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, etcd_prefix
    )
    doc, revision = with_client(settings, lambda c: mesh_push.get(c, settings.prefix))
    if as_json:
        typer.echo(json.dumps({"revision": revision, "document": doc}, indent=2))
    else:
        typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
        typer.echo(f"# revision {revision}")


@app.command()
@reports_errors
def diff(
    file: FileArg,
    etcd: EtcdOpt,
    etcd_cacert: CacertOpt = None,
    etcd_cert: CertOpt = None,
    etcd_key: KeyOpt = None,
    etcd_user: UserOpt = None,
    etcd_password_file: PasswordFileOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """What `push FILE` would change. Exit 0 when nothing, 1 when something (like diff(1))."""
    settings = settings_from(
        etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user, etcd_password_file, etcd_prefix
    )
    mesh = mesh_push.read_input(str(file))
    change = with_client(settings, lambda c: mesh_push.diff(c, settings.prefix, mesh))
    typer.echo(change.render())
    if not change.empty:
        raise typer.Exit(1)
