"""`zt pod add|remove|list`: manage the pods a running `zt run` serves, over its unix socket."""

import json
from pathlib import Path
from typing import Annotated

import typer

from . import _values
from ._common import reports_errors, sub_app
from ._defaults import POD_SOCKET

app = sub_app("Add, remove and list the pods a running node serves.")

PodSocketOpt = Annotated[
    Path,
    typer.Option(
        "--pod-socket",
        help="the node's pod API socket (`zt run --pod-socket`)",
        exists=True,
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output")]


def _call(socket: Path, request: dict[str, object], as_json: bool) -> None:
    from zt.node.podapi import call  # noqa: PLC0415

    response = call(socket, request)
    if not response.get("ok"):
        typer.echo(f"zt: {response.get('error')}", err=True)
        raise typer.Exit(2)
    answer = {k: v for k, v in response.items() if k != "ok"}
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for key, value in answer.items():
        if isinstance(value, list):  # `pods`: one line each
            typer.echo(f"{key}: {len(value)}")
            for row in value:
                typer.echo(f"  {_row(row)}")
        else:
            typer.echo(f"{key}: {_row(value)}")


def _row(row: object) -> str:
    if isinstance(row, dict):
        return "  ".join(f"{k}={v}" for k, v in row.items())
    return str(row)


@app.command()
@reports_errors
def add(
    uid: Annotated[
        str, typer.Argument(help="workload uid (from the mesh config)", parser=_values.uid)
    ],
    netns: Annotated[
        str,
        typer.Option(
            help="pod netns: a name under /run/netns or an absolute netns file path",
            parser=_values.netns,
        ),
    ],
    pod_socket: PodSocketOpt = POD_SOCKET,
    as_json: JsonOpt = False,
) -> None:
    """Serve a pod: open its listeners inside its netns and enroll it in capture.

    \b
    Example:
      zt pod add default/pod-a1 --netns pod-a1 --pod-socket /run/zt/pods.sock
    """
    _call(pod_socket, {"op": "add", "uid": uid, "netns": netns}, as_json)


@app.command()
@reports_errors
def remove(
    uid: Annotated[str, typer.Argument(help="workload uid", parser=_values.uid)],
    pod_socket: PodSocketOpt = POD_SOCKET,
    as_json: JsonOpt = False,
) -> None:
    """Drain and close a pod's connections, close its listeners and unenroll it.

    \b
    Example:
      zt pod remove default/pod-a1
    """
    _call(pod_socket, {"op": "remove", "uid": uid}, as_json)


@app.command("list")
@reports_errors
def list_(pod_socket: PodSocketOpt = POD_SOCKET, as_json: JsonOpt = False) -> None:
    """The pods this node serves, with their IPs, netns and identity.

    \b
    Example:
      zt pod list --json
    """
    _call(pod_socket, {"op": "list"}, as_json)
