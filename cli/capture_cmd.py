"""`zt capture`: the state of BPF capture, read from its pins under bpffs."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._common import reports_errors, sub_app
from ._defaults import PIN_DIR

if TYPE_CHECKING:  # imported by the commands: `zt --help` loads no pyroute2
    from zt.capture import CaptureStatus

app = sub_app("BPF capture (no iptables): status of a running zt's capture.")

PinDir = Annotated[
    Path,
    typer.Option("--pin-dir", help="bpffs directory zt pins capture under", file_okay=False),
]


def _render(st: "CaptureStatus") -> str:
    dns = "on (port 53 -> 127.0.0.1/::1:15053 in each pod)" if st.dns else "off"
    lines = [
        f"mode: {st.mode}",
        f"dns capture: {dns}",
        f"pinned under: {st.pin_dir}",
        f"pods: {len(st.pods)}",
    ]
    for pod in st.pods:
        listeners = ",".join(pod.listeners) or "NONE (fail-closed until zt re-registers)"
        lines.append(
            f"  {pod.name}  ips={','.join(pod.ips)}  netns={pod.netns}"
            f"  cookie={pod.netns_cookie}  listeners={listeners}  dns={'on' if pod.dns else 'off'}"
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
    pin_dir: PinDir = PIN_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """Mode, DNS capture, enrolled pods (IPs, netns), BPF links and per-verdict counters.

    \b
    Example:
      zt capture status --pin-dir /sys/fs/bpf/zt --json
    """
    from zt.capture import read_status  # noqa: PLC0415
    from zt.capture.errors import CaptureNotRunningError  # noqa: PLC0415

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
def remove(pin_dir: PinDir = PIN_DIR) -> None:
    """Detach a pinned capture and delete its pins (after zt is stopped for good).

    \b
    Example:
      zt capture remove --pin-dir /sys/fs/bpf/zt
    """
    from zt.capture import remove_pins  # noqa: PLC0415

    remove_pins(pin_dir)
    typer.echo(f"removed capture pinned under {pin_dir}")
