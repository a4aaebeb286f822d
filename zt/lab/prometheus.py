"""`zt lab up --prometheus`: Debian's Prometheus (/usr/bin/prometheus) scraping every lab node.

Where it runs and listens:
- Prometheus is a lab process in the lab's outside host (`zt-<name>-ext`, 10.255.0.200): like a
  cluster's Prometheus it sits outside the mesh and scrapes each node's metrics endpoint over the
  fabric, `http://10.255.0.<i>:15020/metrics`, twice a second. It listens on 127.0.0.1:9090 inside
  that namespace (nothing else in the lab can reach that address).
- A relay (`python -m zt.lab.prometheus relay`, a lab process in the host's namespace) forwards
  the host's `http://127.0.0.1:9090` to it: 9090 when that port is free, else a free port; `zt lab
  status` prints the address. A Grafana on the host uses it as its Prometheus datasource
  (docs/grafana/zt.json).
- Config and TSDB live in `<lab state dir>/prometheus/` (prometheus.yml, tsdb/); its log is
  `<lab state dir>/prometheus.log`. `zt lab down` stops both processes by PID and removes the dir.

Target labels: Istio's ztunnel dashboard selects ztunnel instances with `pod=~"ztunnel-.*"` (set by
Kubernetes service discovery in a cluster). The lab has no Kubernetes, so every target carries
`node="<node>"` and a relabel rule derives `pod="ztunnel-<node>"` from it; `instance` stays the
scraped address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from zt.capture.netns import NETNS_RUN_DIR, run_in_netns
from zt.errors import NotFoundError, ZtError
from zt.lab import runner
from zt.lab.state import LabState, Proc, start_time
from zt.lab.topology import LabPlan
from zt.timescale import scaled

PORT = 9090  # Prometheus's own default: inside the outside host, and preferred on the host
SCRAPE_INTERVAL = "500ms"  # short: traffic shows in Prometheus within about a second
JOB = "ztunnel"
ROLE = "prometheus"
RELAY_ROLE = "prometheus:relay"
CHUNK = 65536


class PrometheusMissing(NotFoundError):
    reason = "lab_prometheus_missing"


class PrometheusError(ZtError):
    """Prometheus did not start, did not scrape every node, or refused a query."""

    reason = "lab_prometheus"


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


def binary() -> str:
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin")
    if found is None:
        raise PrometheusMissing(
            "--prometheus: got no `prometheus` on PATH or in /usr/bin, expected Debian's "
            "prometheus package (scripts/setup-host.sh installs it)"
        )
    return found


def directory(state: LabState) -> Path:
    return state.dir / "prometheus"


# -- config ----------------------------------------------------------------------------------------
def scrape_config(lab: LabPlan, name: str) -> dict[str, object]:
    """prometheus.yml: one target per node (its fabric address), labelled as described above."""
    targets = [
        {
            "targets": [f"{node.link_ipv4}:{runner.METRICS_PORT}"],
            "labels": {"node": node.name, "lab": name},
        }
        for node in lab.nodes
    ]
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": targets,
                "relabel_configs": [
                    {
                        "source_labels": ["node"],
                        "target_label": "pod",
                        "replacement": "ztunnel-$1",
                    }
                ],
            }
        ],
    }


# -- start -----------------------------------------------------------------------------------------
def start(state: LabState, record: Callable[[Proc], None]) -> str:
    """Start Prometheus and its relay (each recorded as soon as it runs, so a failure later leaves
    `down` everything to stop); wait until it answers through the relay. The host URL.

    Prometheus 2.42 applies its targets on a fixed 5 s tick after start, so the first scrape comes
    ~5 s later: the lab starts it before the node daemons and calls `wait_scraped` at the end."""
    exe = binary()
    lab = state.plan
    home = directory(state)
    (home / "tsdb").mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(lab, state.name), sort_keys=False))
    log = _log(state)
    argv = [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{PORT}",
        "--storage.tsdb.retention.time=1d",
    ]
    pid = runner.spawn(lab.external_netns, argv, log)
    record(Proc(ROLE, pid, start_time(pid) or 0, str(log)))
    url, relay_pid = _start_relay(state, lab.external_netns)
    record(Proc(RELAY_ROLE, relay_pid, start_time(relay_pid) or 0, str(_relay_log(state))))
    _wait_ready(url, pid, log)
    return url


def _log(state: LabState) -> Path:
    return state.dir / "prometheus.log"


def _relay_log(state: LabState) -> Path:
    return state.dir / "prometheus-relay.log"


def _host_listener() -> socket.socket:
    """127.0.0.1:9090 if free, else a free port (another lab or a Prometheus of the host's own)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", PORT))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _start_relay(state: LabState, netns: str) -> tuple[str, int]:
    """The relay gets the bound listener as an inherited fd: its port is known before it runs."""
    with _host_listener() as sock:
        port = sock.getsockname()[1]
        argv = [
            sys.executable, "-m", "zt.lab.prometheus", "relay",
            "--listen-fd", str(sock.fileno()), "--netns", netns, "--port", str(PORT),
        ]  # fmt: skip
        with open(_relay_log(state), "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),), start_new_session=True,
            )  # fmt: skip
    return f"http://127.0.0.1:{port}", proc.pid


def _wait_ready(url: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + scaled(30.0)
    while time.monotonic() < deadline:
        if not runner.alive(pid):
            raise PrometheusError(f"prometheus exited:\n{runner.tail(log)}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/-/ready", timeout=2.0) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.1)
    raise PrometheusError(f"prometheus not ready at {url} after 30 s:\n{runner.tail(log)}")


def wait_scraped(state: LabState, timeout: float = 15.0) -> None:
    """Every node's target scraped successfully once: queries see all nodes from now on."""
    url, nodes, log = state.prometheus, len(state.plan.nodes), _log(state)
    deadline = time.monotonic() + scaled(timeout)
    health: list[str] = []
    while time.monotonic() < deadline:
        active = api(url, "/api/v1/targets", {"state": "active"})["activeTargets"]
        assert isinstance(active, list)
        health = [f"{t['labels'].get('node')}: {t['health']} {t['lastError']}" for t in active]
        if len(active) == nodes and all(t["health"] == "up" for t in active):
            return
        time.sleep(0.2)
    raise PrometheusError(
        f"prometheus scraped not every node after {timeout:g} s "
        f"({'; '.join(health) or 'no targets'}):\n"
        f"{runner.tail(log)}"
    )


# -- HTTP API --------------------------------------------------------------------------------------
def api(url: str, path: str, params: dict[str, str]) -> dict[str, object]:
    """GET an /api/v1 endpoint; its `data`, or PrometheusError with Prometheus's own message."""
    full = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=5.0) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
        body = _json_or_none(exc.read()) or {"error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"prometheus at {url}: {exc}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    assert isinstance(data, dict)
    return data


def _json_or_none(raw: bytes) -> dict[str, object] | None:
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
        return body if isinstance(body, dict) else None
    return None


def query(url: str, expr: str) -> list[Sample]:
    """An instant query; the samples of its vector (a scalar answer is one unlabelled sample)."""
    data = api(url, "/api/v1/query", {"query": expr})
    result = data["result"]
    if data["resultType"] == "scalar":
        assert isinstance(result, list)
        return [Sample({}, float(result[1]))]
    assert isinstance(result, list)
    return [Sample(dict(r["metric"]), float(r["value"][1])) for r in result]


# -- relay -----------------------------------------------------------------------------------------
def relay(listener: socket.socket, netns: str, port: int) -> None:
    """Forward every connection on listener to 127.0.0.1:port inside netns; return once the
    namespace is gone (its lab was removed without stopping this process, e.g. after a crash)."""
    listener.settimeout(1.0)
    while (NETNS_RUN_DIR / netns).exists():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=_carry, args=(conn, netns, port), daemon=True).start()


def _carry(conn: socket.socket, netns: str, port: int) -> None:
    def dial() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=5.0)

    with conn:
        try:
            upstream = run_in_netns(netns, dial)  # the socket stays in netns after the thread
        except OSError:
            return  # the client sees its connection closed: Prometheus is not there
        with upstream:
            upstream.settimeout(None)
            back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
            back.start()
            _pipe(conn, upstream)
            back.join()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF and pass the half-close on; on an error end both directions."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zt.lab.prometheus")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("relay", help="forward a listening socket into a namespace")
    cmd.add_argument("--listen-fd", type=int, required=True)
    cmd.add_argument("--netns", required=True)
    cmd.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with socket.socket(fileno=args.listen_fd) as listener:
        relay(listener, args.netns, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
