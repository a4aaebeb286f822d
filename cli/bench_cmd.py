"""`zt bench node`: the path pods take (captured, HBONE between nodes) through zt and Envoy.
`zt bench dns`: zt's DNS proxy against dnsmasq on this machine."""

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ._common import reports_errors, sub_app

# zt.bench is imported by the command: it pulls in bcc, pyroute2 and cryptography
app = sub_app("Benchmarks on this machine (as root).")


_OWNER = os.getpid()


def _stop(*_: object) -> NoReturn:
    """SIGTERM unwinds the lab's clean-up, as Ctrl-C does. Not in a child pyroute2 forked: it
    stops those with SIGTERM, and one that unwound would tear the lab down under its parent."""
    if os.getpid() != _OWNER:
        os._exit(128 + signal.SIGTERM)
    raise KeyboardInterrupt


def _say(text: str) -> None:
    typer.echo(f"  {text}", err=True)


@app.command()
@reports_errors
def node(
    quick: Annotated[
        bool, typer.Option("--quick", help="3 reps, 32 MiB bulk, 500 pings (under 3 min)")
    ] = False,
    reps: Annotated[
        int | None, typer.Option("--reps", min=1, max=50, help="repetitions [default: 5, quick 3]")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    envoy: Annotated[
        Path | None,
        typer.Option(
            "--envoy",
            exists=True,
            dir_okay=False,
            help="the Envoy binary [default: envoy next to this Python]",
        ),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            help="NAME=TREE: another zt source tree, measured as mode zt_NAME in the same run"
            " (repeatable)",
        ),
    ] = None,
    smoke: Annotated[bool, typer.Option("--smoke", hidden=True)] = False,
) -> None:
    """Pod to pod across two nodes with zt's BPF capture: direct vs Envoy vs zt as the node
    proxy, interleaved; prints medians, then RATIO lines (zt/envoy).

    Example: zt bench node --quick
    """
    from zt.bench import benchlab, envoy_node, measure, report  # noqa: PLC0415
    from zt.bench import node as bench  # noqa: PLC0415

    sizes = measure.SMOKE if smoke else measure.QUICK if quick else measure.FULL
    if reps is not None:
        sizes = dataclasses.replace(sizes, reps=reps)
    variants = tuple(benchlab.Variant.parse(v) for v in variant or ())
    binary = envoy_node.find_envoy(envoy)  # every bad flag is refused before anything is built
    signal.signal(signal.SIGTERM, _stop)
    outcome = bench.bench_node(bench.Options(sizes, binary, variants), _say)
    proofs: dict[str, object] = {
        c.mode: {"ok": c.ok, "evidence": c.evidence} for c in outcome.carried
    }
    if as_json:
        typer.echo(json.dumps(report.document(outcome.results, proofs), indent=2))
    else:
        lines = [
            f"carried {c.mode}: {'yes' if c.ok else 'NO'} - {c.evidence}" for c in outcome.carried
        ]
        typer.echo(report.render(outcome.results, list(outcome.header), lines))
    if not outcome.ok:
        typer.echo(
            "zt: a mode did not carry its traffic the way it claims (see `carried`)", err=True
        )
        sys.exit(1)


@app.command()
@reports_errors
def dns(
    quick: Annotated[
        bool, typer.Option("--quick", help="2 reps of 0.7 s samples (about 12 s)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", hidden=True)] = False,
) -> None:
    """zt's DNS proxy vs dnsmasq over loopback UDP: queries/s and p50 for cached, mesh and
    forwarded names, interleaved; prints medians, then RATIO lines (zt/dnsmasq; for p50,
    dnsmasq/zt). Bounded to 60 s.

    Example: zt bench dns --quick
    """
    from zt.bench import dns as bench  # noqa: PLC0415

    sizes = bench.SMOKE if smoke else bench.QUICK if quick else bench.FULL
    signal.signal(signal.SIGTERM, _stop)
    result = bench.bench_dns(sizes, _say)
    if as_json:
        typer.echo(json.dumps(bench.document(result), indent=2))
    else:
        typer.echo(bench.render(result))
