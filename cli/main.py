"""Entry point of the `zt` console script: one typer sub-app per room, mounted here."""

from __future__ import annotations

import typer

from . import (
    authz_cmd,
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

app = typer.Typer(
    name="zt",
    help="zt: a node proxy for sidecar-less service meshes (BPF capture, HBONE, L4 policy).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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


def main() -> None:
    app()
