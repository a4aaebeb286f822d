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
from zt.node.reconcile import DEFAULT_GRACE
from zt.proxy.accept import DEFAULT_LIMITS
from zt.telemetry.logsetup import configure
from zt.telemetry.logsetup import shutdown as shutdown_logging


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
    admin_allow_remote: Annotated[
        bool,
        typer.Option(
            "--admin-allow-remote",
            help="allow a non-loopback --admin-addr (the admin API has no authentication)",
        ),
    ] = False,
    log_format: Annotated[str, typer.Option(help="text | json")] = "text",
    drain_deadline: Annotated[
        float, typer.Option(help="seconds open connections get on SIGTERM")
    ] = 10.0,
    socks5: Annotated[
        bool, typer.Option("--socks5", help="SOCKS5 on each pod's 127.0.0.1:15080")
    ] = False,
    handshake_timeout: Annotated[
        float,
        typer.Option(help="seconds a new connection has to complete TLS and authenticate"),
    ] = DEFAULT_LIMITS.handshake_timeout,
    pod_grace: Annotated[
        float,
        typer.Option(help="seconds a pod may be missing from the mesh file before it is removed"),
    ] = DEFAULT_GRACE,
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
        admin_allow_remote=admin_allow_remote,
        log_format=log_format,
        drain_deadline=drain_deadline,
        pod_grace=pod_grace,
        handshake_timeout=handshake_timeout,
        socks5=socks5,
        workers=workers,
    )
    configure(log_format)  # after the options: a refused option starts no logging thread
    try:
        uvloop.run(NodeDaemon(options).run())
    finally:
        shutdown_logging()  # what is queued reaches stderr (bounded wait)
