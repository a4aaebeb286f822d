"""`zt run`: the node daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvloop

from cli._common import reports_errors
from zt.addr import SocketAddr
from zt.capture import Mode
from zt.node.daemon import NodeDaemon, NodeOptions
from zt.telemetry.logsetup import configure


@reports_errors
def command(
    config: Annotated[Path, typer.Option(help="mesh file (YAML/JSON); reloaded on change")],
    node: Annotated[str, typer.Option(help="this node's name (workloads' `node`)")],
    ca_dir: Annotated[Path, typer.Option(help="embedded CA state directory")] = Path(
        "/var/lib/zt/ca"
    ),
    trust_domain: Annotated[
        str, typer.Option(help="trust domain of a CA created here")
    ] = "cluster.local",
    capture: Annotated[str, typer.Option(help="outbound capture: connect | sklookup")] = "connect",
    pin_dir: Annotated[Path, typer.Option(help="bpffs directory for pinned capture")] = Path(
        "/sys/fs/bpf/zt"
    ),
    no_pin: Annotated[
        bool, typer.Option("--no-pin", help="unpinned capture (gone with the process)")
    ] = False,
    pod_socket: Annotated[Path, typer.Option(help="unix socket of the pod API")] = Path(
        "/run/zt/pods.sock"
    ),
    metrics_addr: Annotated[str, typer.Option(help="Prometheus /metrics")] = "[::]:15020",
    readiness_addr: Annotated[str, typer.Option(help="/healthz/ready")] = "[::]:15021",
    admin_addr: Annotated[
        str, typer.Option(help="admin API (keep it on loopback)")
    ] = "127.0.0.1:15000",
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
    drain_deadline: Annotated[
        float, typer.Option(help="seconds open connections get on SIGTERM")
    ] = 10.0,
    socks5: Annotated[
        bool, typer.Option("--socks5", help="SOCKS5 on each pod's 127.0.0.1:15080")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(help="data-plane processes sharing each pod's listeners (SO_REUSEPORT)"),
    ] = 1,
) -> None:
    """Run the node proxy: capture, HBONE, policy, metrics, readiness and admin endpoints."""
    if capture not in ("connect", "sklookup"):
        raise typer.BadParameter(
            f"got {capture!r}, expected connect or sklookup", param_hint="--capture"
        )
    if log_format not in ("text", "json"):
        raise typer.BadParameter(
            f"got {log_format!r}, expected text or json", param_hint="--log-format"
        )
    mode: Mode = "connect" if capture == "connect" else "sklookup"
    configure(log_format)
    options = NodeOptions(
        config=config,
        node=node,
        ca_dir=ca_dir,
        trust_domain=trust_domain,
        capture=mode,
        pin_dir=None if no_pin else pin_dir,
        pod_socket=pod_socket,
        metrics=SocketAddr.parse(metrics_addr, field="--metrics-addr"),
        readiness=SocketAddr.parse(readiness_addr, field="--readiness-addr"),
        admin=SocketAddr.parse(admin_addr, field="--admin-addr"),
        log_format=log_format,
        drain_deadline=drain_deadline,
        socks5=socks5,
        workers=workers,
    )
    uvloop.run(NodeDaemon(options).run())
