"""`zt lab up|down|status|exec`: build a lab, run one `zt run` per node in it, tear it all down.

The lab's promises: "a failure names the step and leaves nothing half-built"; "`zt lab down` removes everything
the lab made (processes by PID, netns, links, BPF attachments); running it twice is fine; `up` after
a crash cleans leftovers first."
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from zt.capture import remove_pins
from zt.config import load_document
from zt.errors import NotFoundError, UsageError, ZtError
from zt.identity.ca import CertificateAuthority
from zt.lab import dns, fleet, mesh, prometheus, runner, topology, waypoint, web
from zt.lab.apps import wait_listening
from zt.lab.state import LabState, Proc, load, load_or_none, save, start_time, state_dir
from zt.timescale import scaled

CAPTURE_MODES = ("connect", "sklookup")
CONTROL_MODES = ("file", "etcd")
APP_PORTS = (mesh.APP_PORT, mesh.DENIED_PORT)
EXT = "ext"  # `zt lab exec ext -- ...`: the host outside the mesh
CTL = "ctl"  # `zt lab exec ctl -- ...`: the fleet lab's control host (etcd, signer)

Progress = Callable[[str], None]


class LabUpFailed(ZtError):
    """`zt lab up` failed at `step`; everything it made was removed again."""

    reason = "lab_up_failed"

    def __init__(self, step: str, cause: str, pids: tuple[int, ...] = ()) -> None:
        self.step = step
        self.pids = pids  # what it had started (all stopped again): lets tests check that
        super().__init__(f"lab up failed at step {step!r}: {cause}\n(everything removed again)")


class UnknownPod(NotFoundError):
    reason = "lab_pod_unknown"


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class UpOptions:
    name: str = "lab"
    nodes: int = 2
    pods: int = 2
    capture: str = "connect"
    log_format: str = "text"
    ready_timeout: float = 90.0
    node_args: tuple[str, ...] = ()  # extra `zt run` flags (tests inject failures with these)
    control: str = "file"  # "etcd": the fleet lab (zt.lab.fleet); the CLI's default is in lab_cmd
    prometheus: bool = False  # also run Prometheus scraping every node (zt.lab.prometheus)
    waypoint: bool = False  # also run the waypoint Envoy and the web service behind it


def check_options(opts: UpOptions) -> None:
    if opts.capture not in CAPTURE_MODES:
        raise UsageError(f"--capture: got {opts.capture!r}, expected connect or sklookup")
    if opts.control not in CONTROL_MODES:
        raise UsageError(f"--control: got {opts.control!r}, expected file or etcd")
    if opts.log_format not in ("text", "json"):
        raise UsageError(f"--log-format: got {opts.log_format!r}, expected text or json")
    if not opts.name or not opts.name.replace("-", "").isalnum() or len(opts.name) > 12:
        raise UsageError(f"--name: got {opts.name!r}, expected 1-12 letters, digits or '-'")
    if not 1 <= opts.nodes <= 9 or not 1 <= opts.pods <= 50:
        raise UsageError(
            f"--nodes/--pods: got {opts.nodes}/{opts.pods}, expected 1..9 nodes, 1..50 pods"
        )
    if opts.prometheus:
        prometheus.binary()  # a missing package is refused before anything is built
    if opts.waypoint:
        waypoint.envoy_binary()


# -- up --------------------------------------------------------------------------------------------
def up(opts: UpOptions, progress: Progress = _quiet) -> LabState:
    check_options(opts)
    removed = down(opts.name)
    if removed:
        progress(f"cleaned leftovers of an earlier lab {opts.name!r}: {len(removed)} item(s)")
    state = LabState(
        opts.name,
        opts.nodes,
        opts.pods,
        opts.capture,
        str(state_dir(opts.name)),
        log_format=opts.log_format,
        node_args=opts.node_args,
        control=opts.control,
        waypoint=opts.waypoint,
    )
    lab = state.plan
    build = _Build(lab, opts, state)
    step = "state directory"
    try:
        for step, action in build.steps():
            started = time.monotonic()
            detail = action()
            progress(f"{step}: {detail} ({time.monotonic() - started:.1f} s)")
    except (ZtError, OSError, RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        pids = tuple(p.pid for p in build.state.procs)
        down(opts.name)
        raise LabUpFailed(step, str(exc), pids) from exc
    except BaseException:  # Ctrl-C in the middle: still leave nothing half-built
        down(opts.name)
        raise
    return build.state


@dataclass
class _Build:
    """The steps of `up`, in order; each returns what it did (for the progress line)."""

    lab: topology.LabPlan
    opts: UpOptions
    state: LabState
    tokens: dict[str, str] = field(default_factory=dict)  # one-time join tokens, never on disk

    def steps(self) -> list[tuple[str, Callable[[], str]]]:
        steps = self._lab_steps()
        if self.opts.prometheus:
            # started as soon as its namespace and the state dir exist: its first scrape comes
            # ~5 s after its start (zt.lab.prometheus.start), by then the nodes are ready
            at = [name for name, _ in steps].index("mesh config") + 1
            steps.insert(at, ("prometheus", self.start_prometheus))
            steps.append(("prometheus scrapes", self.prometheus_scraped))
        if self.opts.waypoint:
            # Envoy starts (~1 s) while the node daemons do; readiness waits for both
            at = [name for name, _ in steps].index("node daemons")
            steps.insert(at, ("waypoint", self.start_waypoint))
            steps.append(("waypoint ready", self.waypoint_ready))
        return steps

    def _lab_steps(self) -> list[tuple[str, Callable[[], str]]]:
        if self.state.fleet:
            return [
                ("topology", self.topology),
                ("mesh config", self.config),
                ("etcd cluster", self.etcd),
                ("certificate authority", self.fleet_ca),
                ("signer, mesh push, tokens, pod apps", self.control_plane),
                ("node join", self.join),
                ("node daemons", self.daemons),
                ("readiness", self.ready),
            ]
        return [
            ("topology", self.topology),
            ("mesh config", self.config),
            ("certificate authority", self.ca),
            ("pod apps", self.apps),
            ("node daemons", self.daemons),
            ("readiness", self.ready),
        ]

    def record(self, proc: Proc) -> None:
        self.state = self.state.with_proc(proc)
        save(self.state)  # at once: a crash after this point still lets `down` find the process

    def topology(self) -> str:
        save(self.state)
        topology.build(self.lab)
        lab = self.lab
        return f"{len(lab.namespaces)} namespaces ({len(lab.nodes)} nodes, {len(lab.pods)} pods)"

    def config(self) -> str:
        doc = mesh.mesh_config(self.lab)
        load_document(doc, "lab mesh")  # validate before any daemon reads it
        tmp = self.state.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.state.config)
        return str(self.state.config)

    def ca(self) -> str:
        CertificateAuthority.load_or_init(self.state.ca_dir)  # one CA shared by every node
        return str(self.state.ca_dir)

    def etcd(self) -> str:
        return fleet.start_etcd(fleet.Control(self.state), self.record)

    def fleet_ca(self) -> str:
        return fleet.init_ca(fleet.Control(self.state))

    def control_plane(self) -> str:
        """The signer, the mesh push, one token per node and the pod apps, side by side (each
        command is a process of its own: the lab waits for the slowest, not for their sum)."""
        ctl = fleet.Control(self.state)
        self.record(fleet.start_signer(ctl))
        signer = self.state.procs[-1].pid
        nodes = [n.name for n in self.lab.nodes]
        with ThreadPoolExecutor(2 + len(nodes)) as pool:
            pushed = pool.submit(fleet.push_file, ctl, self.state.config)
            tokens = {n: pool.submit(fleet.create_token, ctl, n) for n in nodes}
            apps = pool.submit(self.apps)
            self.tokens = {n: t.result() for n, t in tokens.items()}
            detail = f"zt ca serve pid {signer}; {pushed.result()}; {apps.result()}"
        return f"{detail}; {len(self.tokens)} join token(s)"

    def join(self) -> str:
        return fleet.join_all(fleet.Control(self.state), self.tokens)

    def apps(self) -> str:
        where: list[tuple[str, str, tuple[int, ...]]] = [
            (p.name, p.netns, APP_PORTS) for p in self.lab.pods
        ]
        where.append((EXT, self.lab.external_netns, (mesh.APP_PORT,)))
        for label, ns, ports in where:
            log = self.state.dir / f"app-{label}.log"
            self.record(_proc(f"app:{label}", runner.start_app(ns, ports, log), log))
        echo = len(where)
        if self.lab.waypoint is not None:  # the HTTP app behind the waypoint (zt.lab.web)
            for pod in mesh.web_pods(self.lab):
                log = self.state.dir / f"web-{pod.name}.log"
                self.record(
                    _proc(f"web:{pod.name}", web.start(pod.netns, mesh.WEB_APP_PORT, log), log)
                )
                where.append((f"web:{pod.name}", pod.netns, (mesh.WEB_APP_PORT,)))
        # the outside host's DNS server, every node's upstream (zt.lab.dns)
        pid, log = dns.start_dnsmasq(self.lab, self.state.dir)
        self.record(_proc(dns.ROLE, pid, log))
        confs = dns.write_resolv_confs(self.lab)
        for _label, ns, ports in where:
            for port in ports:
                wait_listening(ns, port)
        return (
            f"echo servers on {', '.join(map(str, APP_PORTS))} in {echo} namespaces; "
            + (
                f"web app on {mesh.WEB_APP_PORT} in {len(where) - echo}; "
                if len(where) > echo
                else ""
            )
            + f"dnsmasq on {EXT}:53 pid {pid}; {confs} pod resolv.conf(s)"
        )

    def daemons(self) -> str:
        for node in self.lab.nodes:
            p = runner.start_node(
                self.lab,
                node,
                node_source(self.state, node.name),
                self.state.dir,
                capture=self.opts.capture,
                log_format=self.opts.log_format,
                extra=node_args(self.state),
            )
            self.record(_proc(f"node:{node.name}", p.pid, p.log))
        return ", ".join(f"{p.role.partition(':')[2]} pid {p.pid}" for p in _nodes(self.state))

    def ready(self) -> str:
        deadline = time.monotonic() + scaled(self.opts.ready_timeout)
        for node in self.lab.nodes:
            np = node_process(self.state, node.name)
            runner.wait_ready(np, max(1.0, deadline - time.monotonic()))
        return f"{len(self.lab.nodes)} node(s) answer 200 on /healthz/ready"

    def start_waypoint(self) -> str:
        self.record(waypoint.launch(self.state))
        wp = waypoint.plan_of(self.state)
        return f"envoy pid {self.state.procs[-1].pid} in {wp.netns} ({wp.ipv4})"

    def waypoint_ready(self) -> str:
        return waypoint.wait_lab(self.state)

    def start_prometheus(self) -> str:
        url = prometheus.start(self.state, self.record)
        self.state = replace(self.state, prometheus=url)
        save(self.state)
        return f"{url} (in {self.lab.external_netns}, relayed to the host)"

    def prometheus_scraped(self) -> str:
        prometheus.wait_scraped(self.state)
        nodes = len(self.lab.nodes)
        return f"{nodes} node(s) scraped every {prometheus.SCRAPE_INTERVAL}"


def node_args(state: LabState) -> tuple[str, ...]:
    """A node's extra `zt run` flags: the outside host's dnsmasq as its DNS upstream (unless
    the lab's own flags turn DNS off), then the lab's."""
    own = () if "--no-dns" in state.node_args else dns.upstream_args(state.plan)
    return (*own, *state.node_args)


def node_source(state: LabState, node: str) -> tuple[str, ...]:
    """Where a node's `zt run` gets its mesh and certificates: files, or etcd + its state dir."""
    if state.fleet:
        return runner.fleet_source(fleet.Control(state).urls, state.node_state_dir(node))
    return runner.file_source(state.config, state.ca_dir)


def _proc(role: str, pid: int, log: Path) -> Proc:
    return Proc(role, pid, start_time(pid) or 0, str(log))


def _nodes(state: LabState) -> list[Proc]:
    return [p for p in state.procs if p.role.startswith("node:")]


def node_process(state: LabState, node: str) -> runner.NodeProcess:
    lab = state.plan
    plan = lab.node(node)
    proc = state.node_proc(node)
    if proc is None:
        raise UnknownPod(f"node: got {node!r}, expected a node daemon of lab {state.name!r}")
    return runner.NodeProcess(
        node,
        plan.netns,
        proc.pid,
        Path(proc.log),
        state.dir / f"{node}.sock",
        runner.pin_dir(lab, plan),
    )


def restart_node(state: LabState, node: str, timeout: float = 60.0) -> LabState:
    """Start `zt run` again for a node whose daemon died (same config, CA and pin dir: capture
    stayed pinned, the new process re-registers every pod's listeners); wait until ready."""
    lab = state.plan
    old = state.node_proc(node)
    if old is not None and start_time(old.pid) == old.start_time:
        runner.stop(old.pid)
    p = runner.start_node(
        lab,
        lab.node(node),
        node_source(state, node),
        state.dir,
        capture=state.capture,
        log_format=state.log_format,
        extra=node_args(state),
    )
    state = state.with_proc(_proc(f"node:{node}", p.pid, p.log))
    save(state)
    runner.wait_ready(p, scaled(timeout))
    return state


# -- down ------------------------------------------------------------------------------------------
def down(name: str, progress: Progress = _quiet) -> list[str]:
    """Remove the lab: processes (by recorded PID, then any left inside its namespaces), pins,
    namespaces, state. Returns what it removed; an empty list when there was nothing."""
    removed: list[str] = []
    state = load_or_none(name)
    prefix = f"zt-{name}-"
    if state is not None:
        live = [p for p in reversed(state.procs) if start_time(p.pid) == p.start_time]
        nodes = [p for p in live if p.role.startswith("node:")]
        for group in (nodes, [p for p in live if p not in nodes]):  # nodes first (they drain)
            runner.stop_all([p.pid for p in group])
        removed += [f"process {p.pid} ({p.role})" for p in live]
    left = processes_in(topology.leftovers(prefix))
    runner.stop_all(left, deadline=5.0)
    removed += [f"process {pid} (left in a lab namespace)" for pid in left]
    for pins in sorted(Path("/sys/fs/bpf").glob(f"{prefix}*")):
        _remove_pins(pins)
        removed.append(f"pins {pins}")
    removed += [f"netns {ns}" for ns in topology.destroy(prefix)]
    removed += [f"pod resolv.conf {etc}" for etc in dns.remove_resolv_confs(prefix)]
    directory = state_dir(name)
    if directory.exists():
        shutil.rmtree(directory)
        removed.append(f"state {directory}")
    for item in removed:
        progress(f"removed {item}")
    return removed


def _remove_pins(pins: Path) -> None:
    """Detach through the capture (links, maps, routing); a damaged pin dir is unlinked by hand
    (a pinned BPF link held by nobody goes away with its last pin)."""
    with contextlib.suppress(ZtError, OSError):
        remove_pins(pins)
    if pins.exists():
        for entry in pins.iterdir():
            entry.unlink()
        pins.rmdir()


def processes_in(namespaces: list[str]) -> list[int]:
    """PIDs whose network namespace is one of these (compared by inode), never our own."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry / "ns" / "net").st_ino in inodes:
                found.append(int(entry.name))
    return found


# -- status / exec ---------------------------------------------------------------------------------
def status(name: str) -> dict[str, object]:
    state = load(name)
    lab = state.plan
    snap = load_document(yaml.safe_load(state.config.read_text()), str(state.config))
    nodes = []
    for node in lab.nodes:
        proc = state.node_proc(node.name)
        alive = proc is not None and start_time(proc.pid) == proc.start_time
        nodes.append(
            {
                "name": node.name,
                "netns": node.netns,
                "ip": str(node.link_ipv4),
                "ipv6": str(node.link_ipv6),
                "link": node.link,
                "link_peer": f"{lab.fabric_netns}/{node.fabric_veth}",
                "pid": proc.pid if proc and alive else None,
                "ready": alive and _ready(node.netns),
                "capture": state.capture,
                "pin_dir": str(runner.pin_dir(lab, node)),
                "log": proc.log if proc else None,
                "state_dir": str(state.node_state_dir(node.name)) if state.fleet else None,
            }
        )
    pods = []
    for pod in lab.pods:
        workload = snap.by_uid[f"lab/{pod.name}"]
        pods.append(
            {
                "name": pod.name,
                "node": pod.node,
                "ip": str(pod.ipv4),
                "ipv6": str(pod.ipv6),
                "netns": pod.netns,
                "identity": workload.identity,
                "protocol": workload.protocol.value,
            }
        )
    return {
        "name": state.name,
        "control": fleet.control_status(state),
        "capture": state.capture,
        "log_format": state.log_format,
        "state_dir": state.state_dir,
        "config": str(state.config),
        "fabric": {"netns": lab.fabric_netns, "bridge": "fab0"},
        "external": {"netns": lab.external_netns, "ip": str(lab.external_ipv4)},
        "service": {
            "vip": mesh.SERVICE_VIP4,
            "vip6": mesh.SERVICE_VIP6,
            "port": mesh.SERVICE_PORT,
            "hostname": mesh.SERVICE_HOST,
        },
        "dns": {
            "pod_nameserver": dns.POD_NAMESERVER,
            "upstream": str(lab.external_ipv4),
            "outside_names": list(dns.OUTSIDE_NAMES),
        },
        "nodes": nodes,
        "pods": pods,
        "prometheus": _prometheus_status(state),
        "waypoint": waypoint.status(state),
    }


def _prometheus_status(state: LabState) -> dict[str, object] | None:
    proc = state.proc(prometheus.ROLE)
    if not state.prometheus or proc is None:
        return None
    alive = start_time(proc.pid) == proc.start_time
    return {"url": state.prometheus, "pid": proc.pid if alive else None, "log": proc.log}


def _ready(netns: str) -> bool:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return runner.http_get(netns, runner.READY_PORT, "/healthz/ready")[0] == 200
    return False


def netns_of(state: LabState, target: str) -> str:
    """The namespace of a pod, a node (`node1`), the outside host (`ext`), the control host
    (`ctl`, fleet lab) or the waypoint (`waypoint`, `up --waypoint`)."""
    lab = state.plan
    names = {p.name: p.netns for p in lab.pods} | {n.name: n.netns for n in lab.nodes}
    names[EXT] = lab.external_netns
    if lab.control_netns:
        names[CTL] = lab.control_netns
    if lab.waypoint is not None:
        names[lab.waypoint.name] = lab.waypoint.netns
    if target not in names:
        raise UnknownPod(f"POD: got {target!r}, expected one of {', '.join(sorted(names))}")
    return names[target]


def exec_in(name: str, target: str, argv: list[str]) -> int:
    """Run argv inside a lab namespace (like `kubectl exec`); its exit status. In a pod through
    `ip netns exec`, so the pod's resolv.conf (zt.lab.dns) is its /etc/resolv.conf; elsewhere
    network only (`ip netns exec` would hide bpffs and the cgroup mount from node tools)."""
    if not argv:
        raise UsageError("CMD: got nothing, expected a command after `--`")
    state = load(name)
    netns = netns_of(state, target)
    pods = {p.netns for p in state.plan.pods}
    enter = (
        ["ip", "netns", "exec", netns]
        if netns in pods
        else ["nsenter", f"--net=/run/netns/{netns}"]
    )
    with contextlib.suppress(KeyboardInterrupt):
        done = subprocess.run([*enter, *argv], check=False)
        return done.returncode
    return 128 + signal.SIGINT
