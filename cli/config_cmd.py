"""`zt config check|dump|import|export|push|get|diff`: validate and show a mesh file, convert
ztunnel's local config to it and back; keep it in etcd.

`-` as FILE reads the document from stdin. push/get/diff take the shared etcd flags
(cli/_etcd.py); docs/fleet.md describes the keys a push writes and how conflicts are refused.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from . import _values
from ._common import reports_errors, sub_app
from ._etcd import etcd_flags, with_client

if TYPE_CHECKING:  # imported by the commands: `zt --help` loads no pydantic, yaml or httpx
    from collections.abc import Sequence

    from zt.config.ztunnel import Note
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
FormatOpt = Annotated[
    Literal["auto", "zt", "ztunnel"],
    typer.Option(
        "--format", help="FILE's format: zt's mesh file, ztunnel's local config, or detected"
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", "-o", dir_okay=False, help="write the document to this file (default: stdout)"
    ),
]


def _load(file: Path) -> "Snapshot":
    from zt.config import load_file, load_text  # noqa: PLC0415
    from zt.fleet.push import MeshText, read_input  # noqa: PLC0415

    mesh = read_input(str(file))
    return load_text(mesh.text, mesh.source) if isinstance(mesh, MeshText) else load_file(mesh)


def _read_text(file: Path) -> tuple[str, str]:
    from zt.config.loader import read_bounded  # noqa: PLC0415
    from zt.fleet.push import MeshText, read_input  # noqa: PLC0415

    mesh = read_input(str(file))
    return (
        (mesh.text, mesh.source) if isinstance(mesh, MeshText) else (read_bounded(mesh), str(mesh))
    )


def _notes(notes: "Sequence[Note]") -> None:
    for note in notes:
        typer.echo(f"zt: note: {note}", err=True)


def _write(text: str, out: Path | None) -> None:
    if out is None:
        typer.echo(text, nl=False)
        return
    from zt.errors import UsageError  # noqa: PLC0415

    try:
        out.write_text(text)
    except OSError as exc:
        raise UsageError(f"--out: got {str(out)!r}, expected a file to write ({exc})") from None


def _render(doc: object, as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, indent=2) + "\n"
    import yaml  # noqa: PLC0415

    return yaml.safe_dump(doc, sort_keys=False)


def _print_document(doc: object, as_json: bool) -> None:
    typer.echo(_render(doc, as_json), nl=False)


@app.command()
@reports_errors
def check(file: FileArg, fmt: FormatOpt = "auto") -> None:
    """Exit 0 with a one-line summary, or 2 with every problem and its field path. FILE may also
    be ztunnel's own local config (`--format ztunnel`, or detected): the summary then says so.

    \b
    Example:
      zt config check examples/mesh.yaml
      zt config dump examples/mesh.yaml | zt config check -
      zt config check --format ztunnel localhost.yaml
    """
    from zt.config import ztunnel  # noqa: PLC0415

    text, source = _read_text(file)
    document = ztunnel.parse(text, source)
    found, evidence = ztunnel.detect(document) if fmt == "auto" else (fmt, None)
    if found == "zt":
        snap = _load_zt(document, source)
        label = ""
    else:
        imported, snap = ztunnel.import_document(document, source)
        _notes(imported.notes)
        label = f" (ztunnel's local config{f', detected by {evidence}' if evidence else ''})"
    nodes = sorted({w.node for w in snap.workloads if w.node})
    typer.echo(
        f"ok: {file}{label}: {len(snap.workloads)} workloads on {len(nodes)} nodes, "
        f"{len(snap.services)} services, {len(snap.policies)} policies"
    )


def _load_zt(document: object, source: str) -> "Snapshot":
    from zt.config import load_document  # noqa: PLC0415

    return load_document(document, source)


@app.command(name="import")
@reports_errors
def import_(
    file: FileArg,
    out_file: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert ztunnel's local config (the file ztunnel's LOCAL_XDS_PATH names) into a zt mesh
    file. A ztunnel field zt cannot honour is refused, with its path; one that changes nothing
    here is noted on stderr (docs/config-reference.md).

    \b
    Example:
      zt config import localhost.yaml -o mesh.yaml
    """
    from zt.config import ztunnel  # noqa: PLC0415

    text, source = _read_text(file)
    imported, _ = ztunnel.import_document(ztunnel.parse(text, source), source)
    _write(_render(imported.mesh, as_json), out_file)
    _notes(imported.notes)


@app.command()
@reports_errors
def export(
    file: FileArg,
    fmt: Annotated[
        Literal["ztunnel"], typer.Option("--format", help="the format to write")
    ] = "ztunnel",
    out_file: OutOpt = None,
) -> None:
    """Write a zt mesh file as ztunnel's local config (YAML with ztunnel's `!Exact` enum tags),
    for ztunnel's LOCAL_XDS_PATH. zt-only fields (`netns`) are noted on stderr.

    \b
    Example:
      zt config export examples/mesh.yaml --format ztunnel -o localhost.yaml
    """
    from zt.config import ztunnel  # noqa: PLC0415

    text, source = _read_text(file)
    exported = ztunnel.export_document(ztunnel.parse(text, source), source)
    _write(ztunnel.dump_yaml(exported.mesh), out_file)
    _notes(exported.notes)


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
