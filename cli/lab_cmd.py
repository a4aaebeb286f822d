"""`zt lab`: a mesh of nodes and pods as network namespaces on this machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from zt.lab import control, demo, labconfig
from zt.lab.state import load

from ._common import reports_errors

app = typer.Typer(help="A local lab: nodes and pods as network namespaces.", no_args_is_help=True)
config_app = typer.Typer(help="The running lab's mesh document.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# `zt lab up` builds the file lab unless told otherwise: the fleet lab (`--control etcd`) runs six
# more zt commands and three etcd members and is ready ~10 s later on a 2-CPU host; `make lab`
# builds the fleet lab (lab.mk's LAB_CONTROL)
DEFAULT_CONTROL = "file"

NameOpt = Annotated[str, typer.Option("--name", help="lab name (namespaces are zt-<name>-*)")]


def _say(text: str) -> None:
    typer.echo(f"  {text}", err=True)


@app.command()
@reports_errors
def up(
    nodes: Annotated[int, typer.Option(help="node namespaces")] = 2,
    pods: Annotated[int, typer.Option(help="pods per node")] = 2,
    capture: Annotated[str, typer.Option(help="outbound capture: connect | sklookup")] = "connect",
    log_format: Annotated[str, typer.Option(help="node access logs: text | json")] = "text",
    control_: Annotated[
        str,
        typer.Option(
            "--control",
            help="etcd: a control host with 3 etcd members and the signer, nodes joined with "
            "tokens | file: one mesh file and CA dir shared by the nodes",
        ),
    ] = DEFAULT_CONTROL,
    name: NameOpt = "lab",
) -> None:
    """Build the namespaces, the mesh config and CA, start one `zt run` per node, wait for ready."""
    started = time.monotonic()
    typer.echo(
        f"zt lab up {name}: {nodes} nodes x {pods} pods, capture {capture}, control {control_}",
        err=True,
    )
    opts = control.UpOptions(
        name=name,
        nodes=nodes,
        pods=pods,
        capture=capture,
        log_format=log_format,
        control=control_,
    )
    control.up(opts, progress=_say)
    typer.echo(f"lab {name!r} ready in {time.monotonic() - started:.1f} s", err=True)
    _print_status(control.status(name))


@app.command()
@reports_errors
def down(name: NameOpt = "lab") -> None:
    """Remove everything the lab made (processes by PID, pins, namespaces, state). Idempotent."""
    removed = control.down(name, progress=_say)
    typer.echo(f"lab {name!r}: {'removed' if removed else 'nothing to remove'}", err=True)


def _print_status(st: dict[str, object]) -> None:
    typer.echo(f"lab {st['name']}  capture={st['capture']}  state={st['state_dir']}")
    ctl = st["control"]
    assert isinstance(ctl, dict)
    if ctl["mode"] == "etcd":
        members = ", ".join(f"{m['name']} {m['endpoint']} pid={m['pid']}" for m in ctl["etcd"])
        typer.echo(f"control: netns={ctl['netns']} ip={ctl['ip']}")
        typer.echo(f"  etcd: {members}")
        typer.echo(f"  signer: pid={ctl['signer']['pid']}  ca_dir={ctl['ca_dir']}")
    else:
        typer.echo(f"control: file {ctl['config']}  ca_dir={ctl['ca_dir']}")
    typer.echo("nodes:")
    for n in st["nodes"]:  # type: ignore[attr-defined]
        ready = "ready" if n["ready"] else "NOT READY"
        typer.echo(
            f"  {n['name']:<7} netns={n['netns']:<18} ip={n['ip']:<12} link={n['link']}"
            f" (peer {n['link_peer']})  zt run pid={n['pid']}  {ready}"
        )
    typer.echo("pods:")
    for p in st["pods"]:  # type: ignore[attr-defined]
        typer.echo(
            f"  {p['name']:<7} node={p['node']:<6} ip={p['ip']:<10} ipv6={p['ipv6']:<11}"
            f" netns={p['netns']:<19} {p['protocol']:<5} {p['identity']}"
        )


@app.command()
@reports_errors
def status(
    name: NameOpt = "lab",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Nodes and pods: IPs, namespaces, identities, capture mode, readiness, link interfaces."""
    st = control.status(name)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@reports_errors
def exec_(
    ctx: typer.Context,
    pod: Annotated[str, typer.Argument(help="pod (pod1-1), node (node1) or ext")],
    name: NameOpt = "lab",
) -> None:
    """Run a command inside a pod's network namespace: zt lab exec POD -- CMD..."""
    raise typer.Exit(control.exec_in(name, pod, list(ctx.args)))


@app.command("demo")
@reports_errors
def demo_(name: NameOpt = "lab") -> None:
    """Drive every scenario through the running lab and print the table; non-zero if any fails."""
    state = load(name)
    typer.echo(f"zt lab demo {name}: traffic through the mesh ...", err=True)
    rows = demo.run(state, on_row=lambda r: _say(f"{r.verdict} {r.scenario}"))
    if state.fleet:
        from zt.lab import fleetdemo  # noqa: PLC0415

        rows += fleetdemo.run(state, on_row=lambda r: _say(f"{r.verdict} {r.scenario}"))
    typer.echo(demo.table(rows))
    bad = demo.failed(rows)
    typer.echo(
        f"\ndemo: {len(rows) - len(bad)} of {len(rows)} scenarios as expected"
        + (f"; not as expected: {', '.join(r.scenario for r in bad)}" if bad else ""),
    )
    sys.stdout.flush()
    if bad:
        raise typer.Exit(1)


@config_app.command("get")
@reports_errors
def config_get(name: NameOpt = "lab") -> None:
    """Print the lab's mesh document (fleet lab: from etcd, with its revision)."""
    document, revision = labconfig.get(load(name))
    typer.echo(labconfig.render(document, revision), nl=False)


@config_app.command("push")
@reports_errors
def config_push(
    file: Annotated[Path, typer.Argument(help="mesh document (YAML/JSON)")],
    name: NameOpt = "lab",
) -> None:
    """Hand a mesh document to the lab's nodes (fleet lab: `zt config push` with the lab's root
    credentials; file lab: replace the mesh file)."""
    typer.echo(labconfig.push(load(name), file))
