"""The node bench's lab: two nodes (more with variants), three pods each, one pod pair per mode.

Built from zt.lab's pieces (zt.lab.topology: namespaces, veths, bridges; zt.lab.runner: `zt run`
per node; zt.lab.control.down: the clean-up):

    zt      pod1-1 -> pod2-1   `zt run --workers 1` per node, connect-mode capture (its own pins)
    envoy   pod1-2 -> pod2-2   an Envoy node proxy in each pod's netns (zt.bench.envoy_node), its
                               listeners enrolled in a capture this process holds (connect mode)
    direct  pod1-3 -> pod2-3   no capture, no proxy: app to app over the same node link
    zt_<v>  pod<k>-1 -> pod<k+1>-1, two more nodes per `--variant v=TREE`: that tree's `zt run`

Names are unique to the run (`bn<pid>`); everything (processes by PID, capture, namespaces,
pins, state) is removed when the `lab()` block ends, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zt.bench import envoy_node, loadgen
from zt.capture import Capture
from zt.config import load_document
from zt.errors import UsageError
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.lab import control, envoy, mesh, runner, topology
from zt.lab.apps import wait_listening
from zt.lab.state import LabState, Proc, save, start_time, state_dir

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    name: str
    tree: Path

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, sep, tree = text.partition("=")
        path = Path(tree).expanduser().resolve()
        if not sep or not name.isidentifier() or name in MODES:
            raise UsageError(
                f"--variant: got {text!r}, expected NAME=TREE with NAME a word other than"
                f" {', '.join(MODES)}"
            )
        if not (path / "zt" / "__init__.py").is_file() or not (path / "cli").is_dir():
            raise UsageError(
                f"--variant: got {text!r}, expected TREE to be a zt source tree"
                f" ({path} has no zt/__init__.py or cli/)"
            )
        return cls(name, path)


MODES = ("direct", "envoy", "zt")


@dataclass(frozen=True)
class Route:
    """One mode's pods and the proxy processes of each node (none for direct)."""

    mode: str
    src_netns: str
    src_ip: str
    dst_netns: str
    dst_ip: str
    proxies: tuple[tuple[int, ...], ...]  # node -> pids

    @property
    def dst(self) -> tuple[str, int]:
        return (self.dst_ip, loadgen.PORT)


@dataclass
class Bench:
    """A running bench lab: the routes and what each mode's proof reads."""

    state: LabState
    routes: dict[str, Route]
    envoys: dict[str, envoy_node.EnvoyNode]  # node name -> its Envoy
    zt_nodes: dict[str, list[runner.NodeProcess]]  # mode -> its two nodes
    capture: Capture | None = None
    uploaded: dict[str, int] = field(default_factory=dict)


# -- the lab ---------------------------------------------------------------------------------------
def _pod(plan: topology.LabPlan, node: int, index: int) -> topology.PodPlan:
    return next(p for p in plan.pods if p.name == f"pod{node}-{index}")


def _mesh(plan: topology.LabPlan) -> dict[str, object]:
    """The lab's mesh with only the zt pods (pod<n>-1) on HBONE: zt serves no other pod."""
    doc = mesh.mesh_config(plan)
    workloads = doc["workloads"]
    assert isinstance(workloads, list)
    for w in workloads:
        w["protocol"] = "HBONE" if str(w["name"]).endswith("-1") else "TCP"
    return doc


def _sysctls(netns: str) -> None:
    """Many short connections from one pod: reuse TIME_WAIT ports, use every ephemeral port."""
    for setting in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"):
        subprocess.run(
            ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", setting], check=True, timeout=10
        )


class _Lab:
    def __init__(self, state: LabState, progress: Progress) -> None:
        self.state = state
        self.progress = progress

    def record(self, role: str, pid: int, log: Path) -> None:
        self.state = self.state.with_proc(Proc(role, pid, start_time(pid) or 0, str(log)))
        save(self.state)  # at once: control.down finds it whatever happens next

    def build(self) -> None:
        save(self.state)
        plan = self.state.plan
        topology.build(plan)
        doc = _mesh(plan)
        load_document(doc, "bench mesh")
        self.state.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        CertificateAuthority.load_or_init(self.state.ca_dir)
        for pod in plan.pods:
            _sysctls(pod.netns)

    def servers(self, pods: list[topology.PodPlan]) -> None:
        for pod in pods:
            log = self.state.dir / f"loadgen-{pod.name}.log"
            # -P: a directory named zt in the cwd (a checkout's parent) must not shadow the package
            argv = [sys.executable, "-P", "-m", "zt.bench.loadgen", "--port", str(loadgen.PORT)]
            self.record(f"app:{pod.name}", runner.spawn(pod.netns, argv, log), log)
        for pod in pods:
            wait_listening(pod.netns, loadgen.PORT)

    def zt_node(self, node: topology.NodePlan, program: tuple[str, ...]) -> runner.NodeProcess:
        source = runner.file_source(self.state.config, self.state.ca_dir)
        proc = runner.start_node(
            self.state.plan,
            node,
            source,
            self.state.dir,
            capture="connect",
            extra=("--workers", "1"),
            program=program,
        )
        self.record(f"node:{node.name}", proc.pid, proc.log)
        return proc

    def tls(self, pod: topology.PodPlan) -> envoy.TlsFiles:
        """The pod's SPIFFE certificate from the lab's CA: what zt would present for it."""
        ca = CertificateAuthority.load(self.state.ca_dir)
        identity = SpiffeId("cluster.local", "lab", f"sa-{pod.name}")
        return envoy.write_tls(ca, identity, self.state.dir / f"envoy-{pod.name}")


def _variant_program(tree: Path) -> tuple[str, ...]:
    # -P: no current directory on sys.path, so the tree's zt and cli win over this checkout's
    # and no .pyc written into that tree (it may be another engineer's checkout)
    return (
        "env",
        f"PYTHONPATH={tree}",
        "PYTHONDONTWRITEBYTECODE=1",
        sys.executable,
        "-P",
        "-m",
        "cli",
    )


def _start_zt(built: _Lab, variants: tuple[Variant, ...]) -> dict[str, list[runner.NodeProcess]]:
    """`zt run` on node1 and node2 (mode zt), and on two more nodes per variant (zt_<name>)."""
    plan = built.state.plan
    programs: dict[str, tuple[str, ...]] = {"zt": (str(runner.ZT),)}
    programs |= {f"zt_{v.name}": _variant_program(v.tree) for v in variants}
    return {
        mode: [built.zt_node(plan.node(f"node{2 * k + 1 + i}"), program) for i in (0, 1)]
        for k, (mode, program) in enumerate(programs.items())
    }


def _start_envoys(built: _Lab, envoy: Path) -> dict[str, envoy_node.EnvoyNode]:
    """An Envoy node proxy in pod<n>-2 of node1 and node2."""
    plan = built.state.plan
    envoys = {}
    for i in (1, 2):
        pod = _pod(plan, i, 2)
        en = envoy_node.start(
            envoy,
            pod.name,
            pod.netns,
            config=envoy_node.node_config(built.tls(pod), "cluster.local"),
            workdir=built.state.dir,
            base_id=os.getpid() * 10 + i,
        )
        built.record(f"envoy:{pod.name}", en.pid, en.log)
        envoys[f"node{i}"] = en
    return envoys


@contextlib.contextmanager
def lab(
    envoy: Path, variants: tuple[Variant, ...], progress: Progress, name: str = ""
) -> Iterator[Bench]:
    """Build the bench lab; remove all of it when the block ends, however it ends."""
    name = name or f"bn{os.getpid()}"
    state = LabState(name, 2 + 2 * len(variants), 3, "connect", str(state_dir(name)))
    built = _Lab(state, progress)
    capture: Capture | None = None
    owner = os.getpid()
    try:
        started = time.monotonic()
        control.down(name)
        built.build()
        plan = built.state.plan
        zt_nodes = _start_zt(built, variants)
        servers = [_pod(plan, 2, 2), _pod(plan, 2, 3)]
        servers += [_pod(plan, 2 * k + 2, 1) for k in range(len(zt_nodes))]
        built.servers(servers)
        envoys = _start_envoys(built, envoy)
        capture = Capture.open("connect", pin_dir=None)  # unpinned: it dies with this process
        for i, en in enumerate(envoys.values()):
            envoy_node.enroll(capture, en, str(_pod(plan, i + 1, 2).ipv4))
        for procs in zt_nodes.values():
            for proc in procs:
                runner.wait_ready(proc, 120.0)
        routes = _routes(plan, envoys, zt_nodes)
        progress(f"lab {name} ready: {len(plan.nodes)} nodes ({time.monotonic() - started:.1f} s)")
        yield Bench(built.state, routes, envoys, zt_nodes, capture)
    finally:
        if os.getpid() != owner:  # a child pyroute2 forked: the lab is its parent's to remove
            os._exit(70)
        if capture is not None:
            capture.close()
        removed = control.down(name)
        progress(f"lab {name} removed ({len(removed)} items)")


def _routes(
    plan: topology.LabPlan,
    envoys: dict[str, envoy_node.EnvoyNode],
    zt_nodes: dict[str, list[runner.NodeProcess]],
) -> dict[str, Route]:
    def route(
        mode: str, src: topology.PodPlan, dst: topology.PodPlan, pids: tuple[tuple[int, ...], ...]
    ) -> Route:
        return Route(mode, src.netns, str(src.ipv4), dst.netns, str(dst.ipv4), pids)

    out = {
        "direct": route("direct", _pod(plan, 1, 3), _pod(plan, 2, 3), ()),
        "envoy": route(
            "envoy",
            _pod(plan, 1, 2),
            _pod(plan, 2, 2),
            tuple((e.pid,) for e in envoys.values()),
        ),
    }
    for k, (mode, procs) in enumerate(zt_nodes.items()):
        pids = tuple(tuple(_zt_pids(p)) for p in procs)
        out[mode] = route(mode, _pod(plan, 2 * k + 1, 1), _pod(plan, 2 * k + 2, 1), pids)
    return out


def _zt_pids(proc: runner.NodeProcess) -> list[int]:
    """The node's zt processes: the leader and any followers its /config_dump names."""
    pids = [proc.pid]
    with contextlib.suppress(OSError, ValueError, IndexError):
        status, body = runner.http_get(proc.netns, runner.ADMIN_PORT, "/config_dump")
        if status == 200:
            pids += [int(w["pid"]) for w in json.loads(body).get("workers", []) if w.get("pid")]
    return sorted(set(pids))
