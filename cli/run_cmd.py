"""`zt run`: the node daemon, in file mode (--config) or fleet mode (--etcd; docs/fleet.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import uvloop

from zt.addr import SocketAddr
from zt.capture import Mode
from zt.fleet.connect import parse_endpoints
from zt.node.daemon import NodeDaemon, NodeOptions
from zt.node.options import DEFAULT_STATE_DIR
from zt.node.reconcile import DEFAULT_GRACE
from zt.node.sources import preflight
from zt.proxy.accept import DEFAULT_LIMITS
from zt.telemetry.logsetup import configure
from zt.telemetry.logsetup import shutdown as shutdown_logging

from ._common import reports_errors


@reports_errors
def command(
    node: Annotated[str, typer.Option(help="this node's name (workloads' `node`)")],
    config: Annotated[
        Path | None,
        typer.Option(help="file mode: the mesh file (YAML/JSON), reloaded on change"),
    ] = None,
    etcd: Annotated[
        str | None,
        typer.Option(
            help="fleet mode: etcd endpoints, comma-separated (overriding the state dir's); "
            "mesh and certificates come through etcd"
        ),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="fleet mode: the node's credentials, written by `zt node join`")
    ] = DEFAULT_STATE_DIR,
    etcd_cacert: Annotated[
        Path | None,
        typer.Option(help="fleet mode: CA of etcd's server certs (else the state dir's)"),
    ] = None,
    etcd_cert: Annotated[
        Path | None, typer.Option(help="fleet mode: client certificate for etcd's TLS")
    ] = None,
    etcd_key: Annotated[Path | None, typer.Option(help="fleet mode: key of --etcd-cert")] = None,
    ca_dir: Annotated[Path, typer.Option(help="file mode: the CA state directory")] = Path(
        "/var/lib/zt/ca"
    ),
    init_ca: Annotated[
        bool,
        typer.Option(
            "--init-ca",
            help="file mode: create a CA in --ca-dir when it has none (nodes trust each other "
            "only when they share one CA: prefer `zt ca init` and one --ca-dir)",
        ),
    ] = False,
    trust_domain: Annotated[
        str, typer.Option(help="trust domain of a CA created by --init-ca")
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
        node=node,
        config=config,
        etcd=() if etcd is None else parse_endpoints(etcd),
        state_dir=state_dir,
        etcd_cacert=etcd_cacert,
        etcd_cert=etcd_cert,
        etcd_key=etcd_key,
        init_ca=init_ca,
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
    preflight(options)  # a missing CA or state dir: one line, before any BPF or socket
    configure(log_format)  # after the options: a refused option starts no logging thread
    try:
        uvloop.run(NodeDaemon(options).run())
    finally:
        shutdown_logging()  # what is queued reaches stderr (bounded wait)
