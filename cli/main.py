"""Entry point of the `zt` console script: one typer sub-app per room, mounted here."""

from typing import Annotated

import typer

from zt import __version__

from . import (
    authz_cmd,
    bench_cmd,
    ca_cmd,
    capture_cmd,
    config_cmd,
    hbone_cmd,
    lab_cmd,
    node_cmd,
    pod_cmd,
    route_cmd,
    run_cmd,
)
from ._common import ZtGroup

app = typer.Typer(
    name="zt",
    help="zt: a node proxy for sidecar-less service meshes (BPF capture, HBONE, L4 policy).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help: rich markup would eat `[::1]:15008`, and importing rich costs ~70 ms a run
    rich_markup_mode=None,
    cls=ZtGroup,  # click's usage errors as one line each (cli/_common.py)
    epilog="Example: zt config check examples/mesh.yaml; zt run --node node1 --config mesh.yaml",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"zt {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print `zt <version>`, exit"
        ),
    ] = False,
) -> None:
    """zt: a node proxy for sidecar-less service meshes (BPF capture, HBONE, L4 policy)."""


app.command("run")(run_cmd.command)
app.add_typer(pod_cmd.app, name="pod")
app.add_typer(config_cmd.app, name="config")
app.add_typer(authz_cmd.app, name="authz")
app.command("route")(route_cmd.command)
app.add_typer(ca_cmd.app, name="ca")
app.add_typer(node_cmd.app, name="node")
app.add_typer(capture_cmd.app, name="capture")
app.add_typer(hbone_cmd.app, name="hbone")
app.add_typer(lab_cmd.app, name="lab")
app.add_typer(bench_cmd.app, name="bench")


def main() -> None:
    app()
