"""`zt pod add|remove|list`: manage the pods a running `zt run` serves, over its unix socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zt.node.podapi import DEFAULT_SOCKET, call

from ._common import reports_errors

app = typer.Typer(help="Add, remove and list the pods a running node serves.", no_args_is_help=True)

SocketOpt = Annotated[Path, typer.Option("--socket", help="the node's pod API socket")]


def _show(response: dict[str, object]) -> None:
    if not response.get("ok"):
        typer.echo(f"zt: {response.get('error')}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps({k: v for k, v in response.items() if k != "ok"}, indent=2))


@app.command()
@reports_errors
def add(
    uid: Annotated[str, typer.Argument(help="workload uid (from the mesh config)")],
    netns: Annotated[
        str,
        typer.Option(help="pod netns: a name under /run/netns or an absolute netns file path"),
    ],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Serve a pod: open its listeners inside its netns and enroll it in capture."""
    _show(call(socket, {"op": "add", "uid": uid, "netns": netns}))


@app.command()
@reports_errors
def remove(
    uid: Annotated[str, typer.Argument(help="workload uid")],
    socket: SocketOpt = DEFAULT_SOCKET,
) -> None:
    """Drain and close a pod's connections, close its listeners and unenroll it."""
    _show(call(socket, {"op": "remove", "uid": uid}))


@app.command("list")
@reports_errors
def list_(socket: SocketOpt = DEFAULT_SOCKET) -> None:
    """The pods this node serves, with their IPs, netns and identity."""
    _show(call(socket, {"op": "list"}))
