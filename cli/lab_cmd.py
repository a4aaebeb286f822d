"""`zt lab`: a mesh of nodes and pods as network namespaces on this machine."""

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from . import _values
from ._common import reports_errors, sub_app

# zt.lab is imported by each command: it pulls in pyroute2, cryptography and pydantic
app = sub_app("A local lab: nodes and pods as network namespaces.")
config_app = sub_app("The running lab's mesh document.")
app.add_typer(config_app, name="config")

# `zt lab up` builds the file lab unless told otherwise: the fleet lab (`--control etcd`) runs six
# more zt commands and three etcd members and is ready ~10 s later on a 2-CPU host; `make lab`
# builds the fleet lab (lab.mk's LAB_CONTROL)
DEFAULT_CONTROL: Literal["file", "etcd"] = "file"

NameOpt = Annotated[
    str,
    typer.Option(
        "--name",
        help="lab name, 1-12 letters, digits or '-' (namespaces are zt-<name>-*)",
        parser=_values.lab_name,
    ),
]


def _say(text: str) -> None:
    typer.echo(f"  {text}", err=True)


@app.command()
@reports_errors
def up(
    nodes: Annotated[int, typer.Option(help="node namespaces", min=1, max=9)] = 2,
    pods: Annotated[int, typer.Option(help="pods per node", min=1, max=50)] = 2,
    capture: Annotated[
        Literal["connect", "sklookup"], typer.Option(help="outbound capture")
    ] = "connect",
    log_format: Annotated[
        Literal["text", "json"], typer.Option(help="node access log format")
    ] = "text",
    control_: Annotated[
        Literal["file", "etcd"],
        typer.Option(
            "--control",
            help="etcd: a control host with 3 etcd members and the signer, nodes joined with "
            "tokens | file: one mesh file and CA dir shared by the nodes",
        ),
    ] = DEFAULT_CONTROL,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="also run Prometheus scraping every node twice a second, on the host at "
            "http://127.0.0.1:9090 (a free port if 9090 is taken; `zt lab status` prints it)",
        ),
    ] = False,
    waypoint: Annotated[
        bool,
        typer.Option(
            "--waypoint",
            help="also run a waypoint (Envoy, shaped as Istio's) in an uncaptured pod, a web "
            "service behind it with an L7 policy (deny /admin), and `zt lab demo` rows for it",
        ),
    ] = False,
    name: NameOpt = "lab",
    as_json: Annotated[bool, typer.Option("--json", help="the lab's status as JSON")] = False,
) -> None:
    """Build the namespaces, the mesh config and CA, start one `zt run` per node, wait for ready;
    then print the lab's status (as `zt lab status`).

    \b
    Example:
      zt lab up --nodes 2 --pods 2 --control etcd --waypoint
    """
    from zt.lab import control  # noqa: PLC0415

    started = time.monotonic()
    typer.echo(
        f"zt lab up {name}: {nodes} nodes x {pods} pods, capture {capture}, control {control_}"
        + (", waypoint" if waypoint else ""),
        err=True,
    )
    opts = control.UpOptions(
        name=name,
        nodes=nodes,
        pods=pods,
        capture=capture,
        log_format=log_format,
        control=control_,
        prometheus=prometheus,
        waypoint=waypoint,
    )
    control.up(opts, progress=_say)
    typer.echo(f"lab {name!r} ready in {time.monotonic() - started:.1f} s", err=True)
    st = control.status(name)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


@app.command()
@reports_errors
def down(name: NameOpt = "lab") -> None:
    """Remove everything the lab made (processes by PID, pins, namespaces, state). Idempotent.

    \b
    Example:
      zt lab down --name lab
    """
    from zt.lab import control  # noqa: PLC0415

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
    prom = st.get("prometheus")
    if isinstance(prom, dict):
        typer.echo(f"prometheus: {prom['url']}  pid={prom['pid']}  log={prom['log']}")
    wp = st.get("waypoint")
    if isinstance(wp, dict):
        svc = wp["service"]
        typer.echo(
            f"waypoint: netns={wp['netns']} ip={wp['ip']} envoy pid={wp['pid']} admin={wp['admin']}"
            f"  {wp['identity']}  in front of {svc['hostname']} ({svc['vip']}:{svc['port']})"
        )
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
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Nodes and pods: IPs, namespaces, identities, capture mode, readiness, link interfaces.

    \b
    Example:
      zt lab status --json
    """
    from zt.lab import control  # noqa: PLC0415

    st = control.status(name)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@reports_errors
def exec_(
    ctx: typer.Context,
    pod: Annotated[
        str,
        typer.Argument(
            help="pod (pod1-1), node (node1), ext, ctl or waypoint", parser=_values.lab_member
        ),
    ],
    name: NameOpt = "lab",
) -> None:
    """Run a command inside a pod's network namespace: zt lab exec POD -- CMD...

    \b
    Example:
      zt lab exec pod1-1 -- curl -s http://10.96.0.10/
    """
    from zt.lab import control  # noqa: PLC0415

    raise typer.Exit(control.exec_in(name, pod, list(ctx.args)))


@app.command("demo")
@reports_errors
def demo_(name: NameOpt = "lab") -> None:
    """Drive every scenario through the running lab and print the table; non-zero if any fails.

    \b
    Example:
      zt lab demo --name lab
    """
    from zt.lab import demo  # noqa: PLC0415
    from zt.lab.state import load  # noqa: PLC0415

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
def config_get(
    name: NameOpt = "lab",
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Print the lab's mesh document (fleet lab: from etcd, with its revision).

    \b
    Example:
      zt lab config get --json
    """
    from zt.lab import labconfig  # noqa: PLC0415
    from zt.lab.state import load  # noqa: PLC0415

    document, revision = labconfig.get(load(name))
    if as_json:
        typer.echo(json.dumps({"revision": revision, "document": document}, indent=2))
    else:
        typer.echo(labconfig.render(document, revision), nl=False)


@config_app.command("push")
@reports_errors
def config_push(
    file: Annotated[
        Path, typer.Argument(help="mesh document (YAML/JSON)", exists=True, dir_okay=False)
    ],
    name: NameOpt = "lab",
) -> None:
    """Hand a mesh document to the lab's nodes (fleet lab: `zt config push` with the lab's root
    credentials; file lab: replace the mesh file).

    \b
    Example:
      zt lab config push mesh.yaml
    """
    from zt.lab import labconfig  # noqa: PLC0415
    from zt.lab.state import load  # noqa: PLC0415

    typer.echo(labconfig.push(load(name), file))
