"""A node's processes sharing metrics, without the proxy: `python -m` this module.

`leader PARENT`: Registry.leader() under PARENT, two followers (this module's `follower` role, real
processes), a process that inherited PROMETHEUS_MULTIPROC_DIR but never switched (`stray`); prints
one JSON document: the exposition with every follower alive, then after follower 1 was SIGKILLed
and retired, the directory's files at each step, and whether close() removed the directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from zt.telemetry.metrics import MULTIPROC_ENV, MetricsModeError, Registry

MODULE = "tests.unit.telemetry.shared_metrics_node"
OPENED = "istio_tcp_connections_opened_total"
ACCEPTED = "zt_worker_connections_total"
OPEN_NOW = "zt_connections_open"
REVOKED = "zt_policy_revoked_connections_total"  # an add_collector counter, as NodeServices'


def _families(registry: Registry, worker: int) -> None:
    opened = registry.counter(OPENED, "TCP connections opened", ("reporter",))
    opened.inc(10**worker, {"reporter": "destination"})  # 1, 10, 100: every sum is unique
    accepted = registry.counter(ACCEPTED, "Connections accepted", ("worker", "listener"))
    accepted.inc(worker + 1, {"worker": str(worker), "listener": "hbone"})
    registry.gauge(OPEN_NOW, "Connections open", ("pod",)).set(worker + 2, {"pod": "a"})
    # the leader's source restarts from 0 between its two renders (1000, then 400): the counter
    # goes on from 1000 rather than back
    revoked = iter([1000.0, 400.0]) if worker == 0 else iter([float(1000 * (worker + 1))] * 9)
    registry.add_collector(lambda: [(REVOKED, "revoked", "counter", next(revoked))])


def follower(directory: Path, worker: int) -> None:
    registry = Registry.follower(directory)
    _families(registry, worker)
    registry.publish()
    try:
        Registry()
    except MetricsModeError as exc:
        print(f"private refused: {exc}", flush=True)
    sys.stdin.read()  # alive (its gauges count) until the leader closes our stdin or kills us


def stray() -> None:
    """Started with the leader's environment: counts privately, so never into its directory."""
    Registry().counter(OPENED, "TCP connections opened", ("reporter",)).inc(
        99999, {"reporter": "destination"}
    )


def _start(role: str, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", MODULE, role, *args]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def leader(parent: Path) -> None:
    registry = Registry.leader(parent)
    directory = registry.directory
    assert directory is not None
    _families(registry, 0)
    followers = [_start("follower", str(directory), str(i)) for i in (1, 2)]
    said = [f.stdout.readline().strip() if f.stdout else "" for f in followers]
    assert os.environ[MULTIPROC_ENV] == str(directory)
    subprocess.run([sys.executable, "-m", MODULE, "stray"], check=True)
    alive = registry.render()
    files_alive = sorted(os.listdir(directory))
    dead = followers[0]
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    registry.retire(dead.pid)
    after = registry.render()
    files_after = sorted(os.listdir(directory))
    for f in followers[1:]:
        f.communicate("")
    registry.close()
    doc = {
        "pids": [os.getpid(), *(f.pid for f in followers)],
        "said": said,
        "alive": alive,
        "after": after,
        "files_alive": files_alive,
        "files_after": files_after,
        "removed": not directory.exists(),
        "env_after": os.environ.get(MULTIPROC_ENV),
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "leader":
        leader(Path(sys.argv[2]))
    elif role == "follower":
        follower(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        stray()
