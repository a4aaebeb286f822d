"""`zt run`: the node daemon, in file mode (--config) or fleet mode (--etcd; docs/fleet.md)."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from zt.addr import SocketAddr

from . import _values
from ._common import reports_errors
from ._defaults import (
    CA_DIR,
    HANDSHAKE_TIMEOUT,
    KTLS,
    MAX_WORKERS,
    PIN_DIR,
    POD_GRACE,
    POD_SOCKET,
    SPLICE,
    STATE_DIR,
)
from ._defaults import TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN

METRICS_ADDR = SocketAddr.parse("[::]:15020")
READINESS_ADDR = SocketAddr.parse("[::]:15021")
ADMIN_ADDR = SocketAddr.parse("127.0.0.1:15000")


@reports_errors
def command(
    node: Annotated[
        str,
        typer.Option(help="this node's name (workloads' `node`)", parser=_values.node_name),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="file mode: the mesh file (YAML/JSON), reloaded on change",
            parser=_values.mesh_file,
            metavar="FILE",
        ),
    ] = None,
    etcd: Annotated[
        str | None,
        typer.Option(
            help="fleet mode: etcd endpoints, comma-separated (overriding the state dir's); "
            "mesh and certificates come through etcd",
            parser=_values.etcd_urls,
        ),
    ] = None,
    state_dir: Annotated[
        Path,
        typer.Option(
            help="fleet mode: the node's credentials, written by `zt node join`", file_okay=False
        ),
    ] = STATE_DIR,
    etcd_cacert: Annotated[
        Path | None,
        typer.Option(
            help="fleet mode: CA of etcd's server certs (else the state dir's)", dir_okay=False
        ),
    ] = None,
    etcd_cert: Annotated[
        Path | None,
        typer.Option(help="fleet mode: client certificate for etcd's TLS", dir_okay=False),
    ] = None,
    etcd_key: Annotated[
        Path | None,
        typer.Option(help="fleet mode: key of --etcd-cert", dir_okay=False),
    ] = None,
    ca_dir: Annotated[
        Path, typer.Option(help="file mode: the CA state directory", file_okay=False)
    ] = CA_DIR,
    init_ca: Annotated[
        bool,
        typer.Option(
            "--init-ca",
            help="file mode: create a CA in --ca-dir when it has none (nodes trust each other "
            "only when they share one CA: prefer `zt ca init` and one --ca-dir)",
        ),
    ] = False,
    trust_domain: Annotated[
        str,
        typer.Option(help="trust domain of a CA created by --init-ca", parser=_values.trust_domain),
    ] = DEFAULT_TRUST_DOMAIN,
    capture: Annotated[
        Literal["connect", "sklookup"], typer.Option(help="outbound capture")
    ] = "connect",
    pin_dir: Annotated[
        Path, typer.Option(help="bpffs directory for pinned capture", file_okay=False)
    ] = PIN_DIR,
    no_pin: Annotated[
        bool, typer.Option("--no-pin", help="unpinned capture (gone with the process)")
    ] = False,
    pod_socket: Annotated[
        Path, typer.Option(help="unix socket of the pod API", dir_okay=False)
    ] = POD_SOCKET,
    metrics_addr: Annotated[
        SocketAddr,
        typer.Option(
            help="Prometheus /metrics (and /stats/prometheus), ADDR:PORT or [IPV6]:PORT",
            parser=_values.address,
            metavar="ADDR:PORT",
        ),
    ] = METRICS_ADDR,
    readiness_addr: Annotated[
        SocketAddr,
        typer.Option(
            help="/healthz/ready, ADDR:PORT or [IPV6]:PORT",
            parser=_values.address,
            metavar="ADDR:PORT",
        ),
    ] = READINESS_ADDR,
    admin_addr: Annotated[
        SocketAddr,
        typer.Option(
            help="admin API, ADDR:PORT (keep it on loopback)",
            parser=_values.address,
            metavar="ADDR:PORT",
        ),
    ] = ADMIN_ADDR,
    admin_allow_remote: Annotated[
        bool,
        typer.Option(
            "--admin-allow-remote",
            help="allow a non-loopback --admin-addr (the admin API has no authentication)",
        ),
    ] = False,
    log_format: Annotated[Literal["text", "json"], typer.Option(help="access log format")] = "text",
    drain_deadline: Annotated[
        float, typer.Option(help="seconds open connections get on SIGTERM", min=0)
    ] = 10.0,
    socks5: Annotated[
        bool, typer.Option("--socks5", help="SOCKS5 on each pod's 127.0.0.1:15080")
    ] = False,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            help="seconds a new connection has to complete TLS and authenticate", min=0.001
        ),
    ] = HANDSHAKE_TIMEOUT,
    pod_grace: Annotated[
        float,
        typer.Option(
            help="seconds a pod may be missing from the mesh file before it is removed", min=0
        ),
    ] = POD_GRACE,
    workers: Annotated[
        int,
        typer.Option(
            help="data-plane processes sharing each pod's listeners (SO_REUSEPORT)",
            min=1,
            max=MAX_WORKERS,
        ),
    ] = 1,
    ktls: Annotated[
        Literal["auto", "on", "off"],
        typer.Option(
            help="kernel TLS (kTLS) for HBONE's transmit side: on needs the kernel's tls module; "
            "auto stays off with OpenSSL 3.0 (a peer's TLS 1.3 KeyUpdate request would break "
            "the connection)"
        ),
    ] = KTLS,
    dns: Annotated[
        bool,
        typer.Option(
            "--dns/--no-dns",
            help="each pod's DNS proxy on its 127.0.0.1/[::1]:15053, where capture steers the "
            "pod's port-53 traffic: mesh names from the mesh, the rest forwarded",
        ),
    ] = True,
    dns_upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="where the DNS proxy forwards what the mesh does not hold, IP[:PORT] or "
            "[IPV6]:PORT (repeatable; default: the nameservers of /etc/resolv.conf)",
            metavar="ADDR",
        ),
    ] = None,
    splice: Annotated[
        bool,
        typer.Option(
            help="splice(2) DATA payloads from app sockets into kTLS sockets (needs --ktls on)"
        ),
    ] = SPLICE,
    original_source: Annotated[
        bool,
        typer.Option(
            "--original-source/--no-original-source",
            help="deliver to apps from the caller's own IP, as ztunnel (needs kernel >= 5.17; "
            "older ones deliver from the pod's IP); off: from the pod's IP",
        ),
    ] = True,
) -> None:
    """Run the node proxy: capture, HBONE, policy, metrics, readiness and admin endpoints.

    \b
    Example:
      zt run --node node1 --config /etc/zt/mesh.yaml --ca-dir /var/lib/zt/ca \\
        --metrics-addr [::]:15020 --pod-socket /run/zt/pods.sock
    """
    import uvloop  # noqa: PLC0415

    from zt.fleet.connect import parse_endpoints  # noqa: PLC0415
    from zt.node.daemon import NodeDaemon, NodeOptions  # noqa: PLC0415
    from zt.node.options import dns_upstream as parse_dns_upstream  # noqa: PLC0415
    from zt.node.sources import preflight  # noqa: PLC0415
    from zt.proxy import ktls as ktls_mode  # noqa: PLC0415
    from zt.proxy import zerocopy  # noqa: PLC0415
    from zt.telemetry.logsetup import configure  # noqa: PLC0415
    from zt.telemetry.logsetup import shutdown as shutdown_logging  # noqa: PLC0415

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
        capture=capture,
        pin_dir=None if no_pin else pin_dir,
        pod_socket=pod_socket,
        metrics=metrics_addr,
        readiness=readiness_addr,
        admin=admin_addr,
        admin_allow_remote=admin_allow_remote,
        log_format=log_format,
        drain_deadline=drain_deadline,
        pod_grace=pod_grace,
        handshake_timeout=handshake_timeout,
        socks5=socks5,
        workers=workers,
        ktls=ktls,
        dns=dns,
        dns_upstreams=tuple(parse_dns_upstream(u) for u in dns_upstream or ()),
        splice=splice,
        original_source=original_source,
    )
    preflight(options)  # a missing CA or state dir: one line, before any BPF or socket
    ktls_mode.configure(ktls)  # --ktls on without the kernel's tls module: one line, too
    zerocopy.configure(splice)
    configure(log_format)  # after the options: a refused option starts no logging thread
    try:
        uvloop.run(NodeDaemon(options).run())
    finally:
        shutdown_logging()  # what is queued reaches stderr (bounded wait)
