"""`zt capture`: the state of BPF capture, read from its pins under bpffs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zt.capture import DEFAULT_PIN_DIR, CaptureStatus, read_status, remove_pins
from zt.capture.errors import CaptureNotRunningError

from ._common import reports_errors

app = typer.Typer(
    help="BPF capture (no iptables): status of a running zt's capture.", no_args_is_help=True
)

PinDir = Annotated[Path, typer.Option("--pin-dir", help="bpffs directory zt pins capture under")]


def _render(st: CaptureStatus) -> str:
    lines = [f"mode: {st.mode}", f"pinned under: {st.pin_dir}", f"pods: {len(st.pods)}"]
    for pod in st.pods:
        listeners = ",".join(pod.listeners) or "NONE (fail-closed until zt re-registers)"
        lines.append(
            f"  {pod.name}  ips={','.join(pod.ips)}  netns={pod.netns}"
            f"  cookie={pod.netns_cookie}  listeners={listeners}"
        )
    lines.append(f"links: {len(st.links)}")
    for link in st.links:
        lines.append(f"  {link.link_id:>6}  {link.program:<16} {link.target}  prog {link.prog_id}")
    lines.append("counters:")
    for name, value in st.counters.items():
        lines.append(f"  {name:<22} {value}")
    return "\n".join(lines)


@app.command("status")
@reports_errors
def status(
    pin_dir: PinDir = DEFAULT_PIN_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Mode, enrolled pods (IPs, netns), BPF links and per-verdict counters."""
    try:
        st = read_status(pin_dir)
    except CaptureNotRunningError as exc:
        if as_json:
            typer.echo(json.dumps({"running": False, "pin_dir": str(pin_dir)}))
            raise typer.Exit(exc.exit_code) from None
        raise
    if as_json:
        typer.echo(json.dumps({"running": True, **st.to_dict()}, indent=2))
    else:
        typer.echo(_render(st))


@app.command("remove")
@reports_errors
def remove(pin_dir: PinDir = DEFAULT_PIN_DIR) -> None:
    """Detach a pinned capture and delete its pins (after zt is stopped for good)."""
    remove_pins(pin_dir)
    typer.echo(f"removed capture pinned under {pin_dir}")
