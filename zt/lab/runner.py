"""Start, probe and stop `zt run` node daemons inside node namespaces (the lab and the node tests).

A node daemon runs as `nsenter --net=/run/netns/<node netns> zt run ...`, so its metrics (:15020),
readiness (:15021) and admin (127.0.0.1:15000) endpoints listen in that namespace; probes enter it.
Not `ip netns exec`: it also unshares the mount namespace and remounts /sys, which hides the
cgroup-v2 mount (/sys/fs/cgroup/unified) and bpffs (/sys/fs/bpf) that capture needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zt.capture.netns import run_in_netns
from zt.lab.topology import LabPlan, NodePlan

ZT = Path(sys.executable).with_name("zt")
READY_PORT = 15021
METRICS_PORT = 15020
ADMIN_PORT = 15000


@dataclass(frozen=True)
class NodeProcess:
    node: str
    netns: str
    pid: int
    log: Path
    pod_socket: Path
    pin_dir: Path


def pin_dir(lab: LabPlan, node: NodePlan) -> Path:
    return Path("/sys/fs/bpf") / f"{lab.prefix}{node.name}"


def file_source(config: Path, ca_dir: Path) -> tuple[str, ...]:
    """`zt run` flags of a file-mode node: the mesh file and the shared CA dir."""
    return ("--config", str(config), "--ca-dir", str(ca_dir))


def fleet_source(endpoints: str, state_dir: Path) -> tuple[str, ...]:
    """`zt run` flags of a fleet node: etcd and the state dir `zt node join` wrote."""
    return ("--etcd", endpoints, "--state-dir", str(state_dir))


def start_node(
    lab: LabPlan,
    node: NodePlan,
    source: tuple[str, ...],
    state: Path,
    *,
    capture: str = "connect",
    log_format: str = "text",
    extra: tuple[str, ...] = (),
    program: tuple[str, ...] = (),
) -> NodeProcess:
    """Spawn `zt run` for one node in its namespace; output goes to `<state>/<node>.log`.
    `source` says where its mesh and certificates come from (file_source or fleet_source);
    `program` replaces the `zt` of this venv (the node bench runs another tree's zt with it)."""
    state.mkdir(parents=True, exist_ok=True)
    log = state / f"{node.name}.log"
    pod_socket = state / f"{node.name}.sock"
    pins = pin_dir(lab, node)
    argv = [
        *(program or (str(ZT),)), "run", *source, "--node", node.name, "--pod-socket", str(pod_socket),
        "--pin-dir", str(pins), "--capture", capture, "--log-format", log_format,
        *extra,
    ]  # fmt: skip
    pid = spawn(node.netns, argv, log)
    return NodeProcess(node.name, node.netns, pid, log, pod_socket, pins)


def spawn(netns: str, argv: list[str], log: Path) -> int:
    """Run argv inside netns (network namespace only, see above) in its own session (so it can be
    signalled as a group), stdout and stderr appended to log; returns its pid."""
    cmd = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    return proc.pid


def start_app(netns: str, ports: tuple[int, ...], log: Path) -> int:
    """The lab's echo server (zt.lab.apps) inside a pod (or the outside host)."""
    argv = [sys.executable, "-P", "-m", "zt.lab.apps", "echo"]  # -P: the cwd shadows nothing
    for port in ports:
        argv += ["--port", str(port)]
    return spawn(netns, argv, log)


def http_get(
    netns: str, port: int, path: str, host: str = "127.0.0.1", timeout: float = 2.0
) -> tuple[int, str]:
    """A one-shot HTTP GET from inside a namespace; (status, body)."""
    return http_request(netns, port, "GET", path, host=host, timeout=timeout)


def http_request(
    netns: str, port: int, method: str, path: str, *, host: str = "127.0.0.1", timeout: float = 2.0
) -> tuple[int, str]:
    """A one-shot HTTP request without a body from inside a namespace; (status, body)."""

    def ask() -> tuple[int, str]:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
            sock.sendall(head.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status, _, body = data.partition(b"\r\n\r\n")
        return int(status.split(b" ")[1]), body.decode(errors="replace")

    return run_in_netns(netns, ask, timeout=timeout + 5)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        if f.read().split(") ")[-1].startswith("Z"):
            return False
    return True


def wait_ready(proc: NodeProcess, timeout: float = 60.0) -> None:
    """Poll /healthz/ready until 200; raise with the log's tail if the daemon dies or times out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive(proc.pid):
            raise RuntimeError(f"zt run for {proc.node} exited:\n{tail(proc.log)}")
        with contextlib.suppress(OSError):
            status, body = http_get(proc.netns, READY_PORT, "/healthz/ready")
            if status == 200:
                return
            last = body.strip()
        time.sleep(0.2)
    raise TimeoutError(f"{proc.node} not ready after {timeout:g} s ({last}):\n{tail(proc.log)}")


def _signal(pid: int, sig: signal.Signals) -> None:
    """The process group when pid leads one (what spawn() makes), else the process alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop(pid: int, deadline: float = 15.0) -> bool:
    """SIGTERM (drain), then SIGKILL after `deadline` s. True if it had to be killed."""
    return stop_all([pid], deadline) == [pid]


def stop_all(pids: list[int], deadline: float = 15.0) -> list[int]:
    """`stop` for several processes side by side: SIGTERM to each, then one wait for all (a lab's
    down waits for the slowest to exit, not for the sum of them); SIGKILL to those still there
    after `deadline` s. Returns those it had to kill."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    end = time.monotonic() + deadline
    left = list(pids)
    while left and time.monotonic() < end:
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        left = [pid for pid in left if alive(pid)]
        if left:
            time.sleep(0.05)
    for pid in left:
        _signal(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return left


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
