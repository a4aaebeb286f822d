"""`zt bench node`: the path pods take, measured through zt and through Envoy as the node proxy.

One lab (zt.lab.topology: namespaces, veths, bridges; zt.lab.runner: `zt run` per node), two
nodes and three pods per node, one pod pair per mode:

    zt      pod1-1 -> pod2-1   `zt run --workers 1` per node, connect-mode capture (its own pins)
    envoy   pod1-2 -> pod2-2   an Envoy node proxy in each pod's netns (zt.bench.envoy_node), its
                               listeners enrolled in a capture this process holds (connect mode)
    direct  pod1-3 -> pod2-3   no capture, no proxy: app to app over the same node link

`--variant NAME=TREE` adds two nodes per variant running another zt source tree's `zt run`
(pod<k>-1 -> pod<k+1>-1). Every measurement is taken for every mode, the modes interleaved in
alternating order, `reps` times. Each mode also proves it carried the traffic the way it claims
(`Carried`): a bench that silently measured direct would be worthless.

Names are unique to the run (`bn<pid>`); everything (processes by PID, capture, namespaces,
pins, state) is removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zt.bench import envoy_node, loadgen
from zt.bench.report import Results, Sample
from zt.capture import Capture, read_status
from zt.config import load_document
from zt.errors import UsageError, ZtError
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.lab import control, mesh, runner, topology
from zt.lab.apps import wait_listening
from zt.lab.state import LabState, Proc, save, start_time, state_dir

MiB = 1024 * 1024
CONCURRENT = 8  # clients of the concurrent new-connection measurement
Progress = Callable[[str], None]


class BenchFailed(ZtError):
    reason = "bench_failed"


@dataclass(frozen=True)
class Sizes:
    reps: int
    bulk: int  # bytes of each upload and download
    pings: int  # 64-byte round trips per latency sample
    conn_seconds: float  # duration of each new-connections sample
    conn_limit: int  # at most this many connections per sample
    idle: int  # idle connections held for the RSS sample


FULL = Sizes(reps=5, bulk=256 * MiB, pings=3000, conn_seconds=3.0, conn_limit=30000, idle=1000)
QUICK = Sizes(reps=3, bulk=32 * MiB, pings=500, conn_seconds=0.5, conn_limit=5000, idle=1000)
SMOKE = Sizes(reps=1, bulk=1 * MiB, pings=20, conn_seconds=0.2, conn_limit=100, idle=20)


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
            argv = [sys.executable, "-m", "zt.bench.loadgen", "--port", str(loadgen.PORT)]
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

    def tls(self, pod: topology.PodPlan) -> envoy_node.TlsFiles:
        """The pod's SPIFFE certificate from the lab's CA: what zt would present for it."""
        ca = CertificateAuthority.load(self.state.ca_dir)
        identity = SpiffeId("cluster.local", "lab", f"sa-{pod.name}")
        return envoy_node.write_tls(ca, identity, self.state.dir / f"envoy-{pod.name}")


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


# -- measurements ----------------------------------------------------------------------------------
def cpu_seconds(pids: tuple[int, ...]) -> float:
    """utime + stime of these processes, all their threads (/proc/<pid>/stat fields 14, 15)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: tuple[int, ...]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _timeout(sizes: Sizes) -> float:
    return 30.0 + sizes.bulk / MiB  # ≥ 1 MiB/s, or the sample fails


def measure_bulk(bench: Bench, route: Route, sizes: Sizes) -> Sample:
    """Upload then download `bulk` bytes on one connection; MB/s each and each node's CPU s/GB."""
    before = [cpu_seconds(p) for p in route.proxies]
    limit = _timeout(sizes)
    up = loadgen.in_pod(
        route.src_netns, lambda: loadgen.upload(route.dst, sizes.bulk, limit), limit + 5
    )
    bench.uploaded[route.mode] = bench.uploaded.get(route.mode, 0) + sizes.bulk
    down = loadgen.in_pod(
        route.src_netns, lambda: loadgen.download(route.dst, sizes.bulk, limit), limit + 5
    )
    after = [cpu_seconds(p) for p in route.proxies]
    gb = 2 * sizes.bulk / 1e9
    out = {"up_MB/s": sizes.bulk / 1e6 / up, "down_MB/s": sizes.bulk / 1e6 / down}
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        out[f"cpu_node{i + 1}_s/GB"] = (b - a) / gb
    if route.proxies:
        out["cpu_s/GB"] = sum(out[f"cpu_node{i + 1}_s/GB"] for i in range(len(route.proxies)))
    return out


def measure_latency(route: Route, sizes: Sizes) -> Sample:
    rtts = loadgen.in_pod(
        route.src_netns, lambda: loadgen.ping_pong(route.dst, sizes.pings, 30.0), 60.0
    )
    rtts.sort()
    return {
        "p50_us": statistics.median(rtts),
        "p99_us": rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)],
    }


def measure_connections(route: Route, sizes: Sizes, clients: int) -> float:
    """New connections per second (connect, 64 B echoed, close) with `clients` in parallel."""

    def one() -> int:
        return loadgen.new_connections(
            route.dst, sizes.conn_seconds, sizes.conn_limit // clients, 10.0
        )

    start = time.perf_counter()
    counts = loadgen.in_pod_parallel(route.src_netns, [one] * clients, sizes.conn_seconds + 30)
    return sum(counts) / (time.perf_counter() - start)


def measure_idle(route: Route, sizes: Sizes) -> Sample:
    """Each node's proxy RSS growth (KiB) per 1,000 idle connections held open through it."""
    before = [rss_kib(p) for p in route.proxies]
    with loadgen.held(route.src_netns, route.dst, sizes.idle, 10.0) as n:
        time.sleep(0.5)  # let the proxies' lazy allocations (buffers, stats) land
        after = [rss_kib(p) for p in route.proxies]
    return {
        f"rss_node{i + 1}_KiB/1k": (b - a) * 1000 / n
        for i, (a, b) in enumerate(zip(before, after, strict=True))
    }


def _warm(route: Route) -> None:
    """One connection through the path first: pools, certificates, first-use allocations."""
    loadgen.in_pod(route.src_netns, lambda: loadgen.new_connections(route.dst, 5.0, 3, 10.0), 30)


def run(bench: Bench, sizes: Sizes, progress: Progress) -> Results:
    """Every measurement for every mode, modes interleaved in alternating order, `reps` times."""
    modes = list(bench.routes)
    results: Results = {m: {} for m in modes}

    def add(mode: str, values: Sample) -> None:
        for key, value in values.items():
            results[mode].setdefault(key, []).append(value)

    def attempt(mode: str, keys: tuple[str, ...], fn: Callable[[Route], Sample]) -> None:
        try:
            add(mode, fn(bench.routes[mode]))
        except (loadgen.LoadError, OSError, TimeoutError) as exc:
            progress(f"  {mode}: a sample failed ({exc}); counted in `failures`")
            # NaN in every list the step fills: repetition i stays index i of each list
            add(mode, dict.fromkeys(keys, math.nan) | {"failures": 1.0})

    def bulk(r: Route) -> Sample:
        return measure_bulk(bench, r, sizes)

    def latency(r: Route) -> Sample:
        return measure_latency(r, sizes)

    def sequential(r: Route) -> Sample:
        return {"conn/s": measure_connections(r, sizes, 1)}

    def concurrent(r: Route) -> Sample:
        return {"conn/s_c8": measure_connections(r, sizes, CONCURRENT)}

    def idle(r: Route) -> Sample:
        return measure_idle(r, sizes)

    steps: list[tuple[tuple[str, ...], Callable[[Route], Sample]]] = [
        (("up_MB/s", "down_MB/s", "cpu_node1_s/GB", "cpu_node2_s/GB", "cpu_s/GB"), bulk),
        (("p50_us", "p99_us"), latency),
        (("conn/s",), sequential),
        (("conn/s_c8",), concurrent),
    ]
    for mode in modes:
        _warm(bench.routes[mode])
    for mode in modes:  # memory first, before bulk runs leave free heap to reuse
        attempt(mode, ("rss_node1_KiB/1k", "rss_node2_KiB/1k"), idle)
    for rep in range(sizes.reps):
        order = modes if rep % 2 == 0 else modes[::-1]
        started = time.monotonic()
        for keys, fn in steps:  # each metric for every mode back to back: same machine state
            for mode in order:
                attempt(mode, keys, fn)
        progress(
            f"rep {rep + 1}/{sizes.reps} ({' '.join(order)}): {time.monotonic() - started:.1f} s"
        )
    return results


# -- proof -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Carried:
    """What shows that a mode's bytes went the way the mode claims."""

    mode: str
    ok: bool
    evidence: str


def _zt_received(proc: runner.NodeProcess) -> float:
    status, body = runner.http_get(proc.netns, runner.METRICS_PORT, "/metrics", timeout=5)
    if status != 200:
        raise BenchFailed(f"{proc.node}: /metrics answered {status}")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("istio_tcp_received_bytes_total{")
    )


def counters(bench: Bench) -> dict[str, float]:
    """The proxies' byte counters each proof compares: read before and after the run."""
    out: dict[str, float] = {}
    node1, node2 = bench.envoys["node1"].stats(), bench.envoys["node2"].stats()
    out["envoy:out_tunnels"] = node1.get("cluster.hbone_out.upstream_rq_total", 0)
    out["envoy:out_tls_bytes"] = node1.get("cluster.hbone_out.upstream_cx_tx_bytes_total", 0)
    out["envoy:in_connects"] = node2.get("http.hbone_in.downstream_rq_total", 0)
    out["envoy:in_app_bytes"] = node2.get("cluster.inbound_app.upstream_cx_tx_bytes_total", 0)
    if bench.capture is not None:  # the capture that holds the Envoy pods
        got = bench.capture.counters()
        for name in ("connect_redirect", "sockopt_orig", "lookup_hbone"):
            out[f"envoy:capture_{name}"] = got.get(name, 0)
    for mode, procs in bench.zt_nodes.items():
        out[f"{mode}:in_app_bytes"] = _zt_received(procs[1])
    return out


def prove(bench: Bench, before: dict[str, float], after: dict[str, float]) -> list[Carried]:
    """Each mode carried its uploads the way it claims: zt's and Envoy's counters on the
    receiving node grew by at least the bytes uploaded; direct's server saw the client pod's own
    address and no capture holds its pods."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    out = []
    for mode, route in bench.routes.items():
        up = bench.uploaded.get(mode, 0)
        if mode == "envoy":
            got = delta["envoy:in_app_bytes"]
            tunnels = delta["envoy:out_tunnels"]
            captured = (
                delta["envoy:capture_connect_redirect"],
                delta["envoy:capture_sockopt_orig"],
                delta["envoy:capture_lookup_hbone"],
            )
            # the tunnels share pooled HTTP/2 connections: one SYN to :15008 carries many
            ok = got >= up > 0 and tunnels > 0 and min(captured[:2]) >= tunnels >= captured[2] > 0
            evidence = (
                f"node2 Envoy wrote {got:.0f} B to the app for {up} B uploaded;"
                f" {tunnels:.0f} CONNECTs out of node1, {delta['envoy:in_connects']:.0f} into"
                f" node2; capture: {captured[0]:.0f} app connects redirected to :15001,"
                f" {captured[1]:.0f} SO_ORIGINAL_DST answered, {captured[2]:.0f} HBONE"
                " connections' SYNs steered to Envoy's :15008 (sk_lookup)"
            )
        elif mode == "direct":
            seen = loadgen.peers(route.dst_netns).get(route.src_ip, 0)
            enrolled = _enrolled(bench)
            free = route.src_netns not in enrolled and route.dst_netns not in enrolled
            ok = seen >= up > 0 and free
            evidence = (
                f"the server got {seen} B from {route.src_ip} (the client pod itself) for {up} B"
                f" uploaded; no capture holds its pods: {free}"
            )
        else:
            got = delta[f"{mode}:in_app_bytes"]
            ok = got >= up > 0
            node = bench.zt_nodes[mode][1].node
            evidence = (
                f"{node}'s istio_tcp_received_bytes_total grew {got:.0f} B for {up} B uploaded"
            )
        out.append(Carried(mode, ok, evidence))
    return out


def _enrolled(bench: Bench) -> set[str]:
    """Every netns some capture of this lab enrolled: this process's and every zt node's."""
    netns: set[str] = set()
    if bench.capture is not None:
        netns |= {Path(p.netns).name for p in bench.capture.status().pods}
    for procs in bench.zt_nodes.values():
        for proc in procs:
            with contextlib.suppress(ZtError, OSError):
                netns |= {Path(p.netns).name for p in read_status(proc.pin_dir).pods}
    return netns


# -- the whole bench -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    sizes: Sizes
    envoy: Path | None = None  # None: the `envoy` next to this Python
    variants: tuple[Variant, ...] = ()


@dataclass(frozen=True)
class Outcome:
    results: Results
    carried: tuple[Carried, ...]
    header: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.carried)


def bench_node(opts: Options, progress: Progress) -> Outcome:
    """Build the lab, measure every mode, prove each carried its bytes, remove the lab."""
    if os.geteuid() != 0:
        raise UsageError(
            f"zt bench node: got uid {os.geteuid()}, expected root (namespaces, BPF capture)"
        )
    envoy = envoy_node.find_envoy(opts.envoy)
    sizes = opts.sizes
    started = time.monotonic()
    with lab(envoy, opts.variants, progress) as bench:
        before = counters(bench)
        results = run(bench, sizes, progress)
        carried = prove(bench, before, counters(bench))
        routes = [
            f"  {r.mode}: {Path(r.src_netns).name} {r.src_ip} -> {r.dst_ip}:{loadgen.PORT}"
            f" (proxy pids {[list(p) for p in r.proxies]})"
            for r in bench.routes.values()
        ]
    progress(f"done in {time.monotonic() - started:.0f} s")
    header = (
        f"zt bench node: {sizes.reps} reps, bulk {sizes.bulk // MiB} MiB each way, {sizes.pings}"
        f" pings, new connections {sizes.conn_seconds:g} s (1 and {CONCURRENT} clients),"
        f" {sizes.idle} idle connections; cores {os.cpu_count()}",
        *routes,
        *(f"  variant zt_{v.name}: {v.tree}" for v in opts.variants),
    )
    return Outcome(results, tuple(carried), header)
