"""`zt config check|dump|push|get|diff`: validate and show a mesh file; keep it in etcd.

`-` as FILE reads the document from stdin. push/get/diff take the shared etcd flags
(cli/_etcd.py); docs/fleet.md describes the keys a push writes and how conflicts are refused.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import _values
from ._common import reports_errors, sub_app
from ._etcd import etcd_flags, with_client

if TYPE_CHECKING:  # imported by the commands: `zt --help` loads no pydantic, yaml or httpx
    from zt.fleet.connect import EtcdSettings
    from zt.state.snapshot import Snapshot

app = sub_app("Validate and show mesh config files; push them to etcd.")

FileArg = Annotated[
    Path,
    typer.Argument(
        help="mesh file (YAML or JSON); - reads stdin", parser=_values.input_file, metavar="FILE"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of YAML")]


def _load(file: Path) -> "Snapshot":
    from zt.config import load_file, load_text  # noqa: PLC0415
    from zt.fleet.push import MeshText, read_input  # noqa: PLC0415

    mesh = read_input(str(file))
    return load_text(mesh.text, mesh.source) if isinstance(mesh, MeshText) else load_file(mesh)


def _print_document(doc: object, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    import yaml  # noqa: PLC0415

    typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


@app.command()
@reports_errors
def check(file: FileArg) -> None:
    """Exit 0 with a one-line summary, or 2 with every problem and its field path.

    \b
    Example:
      zt config check examples/mesh.yaml
      zt config dump examples/mesh.yaml | zt config check -
    """
    snap = _load(file)
    nodes = sorted({w.node for w in snap.workloads if w.node})
    typer.echo(
        f"ok: {file}: {len(snap.workloads)} workloads on {len(nodes)} nodes, "
        f"{len(snap.services)} services, {len(snap.policies)} policies"
    )


@app.command()
@reports_errors
def dump(file: FileArg, as_json: JsonOpt = False) -> None:
    """Print the normalized snapshot (defaults filled in): a mesh file `zt config check` and
    `zt run` accept. Each workload's identity is spiffe://<trustDomain>/ns/<namespace>/sa/
    <serviceAccount> of its fields.

    \b
    Example:
      zt config dump examples/mesh.yaml --json
    """
    from zt.config.dump import document  # noqa: PLC0415

    # the identity is derived, not a field of the mesh file: without it the dump re-loads
    _print_document(document(_load(file), with_identity=False), as_json)


# --- etcd ---------------------------------------------------------------------------------------


@app.command()
@reports_errors
@etcd_flags()
def push(
    file: FileArg,
    settings: "EtcdSettings",
) -> None:
    """Validate FILE like `check`, then write what changed to etcd in one txn. Exit 3 when the
    mesh changed in etcd meanwhile (nothing written: diff and push again).

    \b
    Example:
      zt config push mesh.yaml --etcd https://10.0.0.1:2379 --etcd-cacert etcd-ca.pem \\
        --etcd-user root --etcd-password-file root.pw
    """
    from zt.fleet import push as mesh_push  # noqa: PLC0415

    mesh = mesh_push.read_input(str(file))
    result = with_client(settings, lambda c: mesh_push.push(c, settings.prefix, mesh))
    if result.diff.empty:
        typer.echo(f"no change: etcd already holds {file} (revision {result.revision})")
    else:
        typer.echo(f"pushed {file}: {result.diff.summary()} (revision {result.revision})")


@app.command()
@reports_errors
@etcd_flags()
def get(
    settings: "EtcdSettings",
    as_json: JsonOpt = False,
) -> None:
    """Print the mesh held in etcd, and the revision it was read at.

    \b
    Example:
      zt config get --etcd https://10.0.0.1:2379 --etcd-cacert etcd-ca.pem --json
    """
    from zt.fleet import push as mesh_push  # noqa: PLC0415

    doc, revision = with_client(settings, lambda c: mesh_push.get(c, settings.prefix))
    if as_json:
        _print_document({"revision": revision, "document": doc}, as_json=True)
    else:
        _print_document(doc, as_json=False)
        typer.echo(f"# revision {revision}")


@app.command()
@reports_errors
@etcd_flags()
def diff(
    file: FileArg,
    settings: "EtcdSettings",
) -> None:
    """What `push FILE` would change. Exit 0 when nothing, 1 when something (like diff(1)).

    \b
    Example:
      zt config diff mesh.yaml --etcd https://10.0.0.1:2379 --etcd-cacert etcd-ca.pem
    """
    from zt.fleet import push as mesh_push  # noqa: PLC0415

    mesh = mesh_push.read_input(str(file))
    change = with_client(settings, lambda c: mesh_push.diff(c, settings.prefix, mesh))
    typer.echo(change.render())
    if not change.empty:
        raise typer.Exit(1)
