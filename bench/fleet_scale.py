"""Fleet scale: N simulated nodes, each a real EtcdMeshSource, against one etcd (docs/fleet.md).

Run: `.venv/bin/python -m bench.fleet_scale [--nodes 100] [--workloads 5000] [--updates 20]
[--procs 4] [--members 1]` (no root; loopback; hard cap `--deadline`, 300 s by default).

What runs: one etcd cluster (zt/fleet/etcdserver.py, data on /dev/shm); a mesh of W workloads
placed round-robin on N node names, W/10 services and W/50 policies (mesh_document), written as
`zt config push` writes it (zt/fleet/push.py; in 127-object txns when etcd refuses one txn that
large: its default --max-txn-ops is 128). Then P processes each run N/P nodes as asyncio tasks:
every node has its own EtcdClient, its own list + watch (with its probes), its own decode and
Snapshot build and its own SnapshotStore (zt/fleet/meshwatch.py); nodes share only the interpreter.
Each update is a `zt config push` that changes one workload and one policy (the policy carries the
update's number, so a node knows which update a snapshot holds); updates go out one at a time, the
next once every node holds the last.

Measured (wall clock: time.time(), the same clock in every process on this host):
  push_to_apply   push() returned (its txn had) -> a node's SnapshotStore.swap, per (node, update)
  list            one node's EtcdMeshSource.initial(): range the mesh + decode + Snapshot build
  decode CPU      each MeshDecoder.decode's own thread CPU in the node processes: one node's cost
                  of applying one update (or its initial list)
  etcd CPU        utime+stime of the etcd processes (/proc/PID/stat): alone (no client), per
                  status request (a watch's probe), per push with no node watching, per node and
                  second while idle (every node watching, nothing pushed), and per update with
                  every node watching, net of the idle cost for as long and of the status probes
                  etcd counted meanwhile (/metrics: grpc_server_handled_total{grpc_method="Status"})
  node CPU, bytes utime+stime, and bytes read (/proc/PID/io rchar: sockets) of the node processes
                  per update per node, net of the idle cost for as long
  RSS             node processes' VmRSS growth per node (the interpreter's own RSS is not in it)
The node processes share the machine's cores: push_to_apply includes waiting for a core behind the
other simulated nodes (every node decodes the same update at the same moment), so it is an upper
bound for a node with its own CPU, which applies an update in about its decode CPU plus the 20 ms
batch window of zt/fleet/meshwatch.py.
Prints `FLEET_SCALE key=value ...` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import uvloop

from zt.config.watcher import SnapshotStore
from zt.fleet import keys, push
from zt.fleet.etcd import EtcdClient, Put
from zt.fleet.etcdserver import EtcdCluster
from zt.fleet.meshdoc import MeshDecoder
from zt.fleet.meshwatch import EtcdMeshSource
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry

MARK_NAMESPACE = "ns-00"
MARK_POLICY = "bench-mark"  # its destination port is MARK_BASE + the update number
MARK_BASE = 20000
NAMESPACES = 20
ACCOUNTS = 50
WORKLOAD_NET = ipaddress.ip_address("10.128.0.0")
VIP_NET = ipaddress.ip_address("10.96.0.0")
SEED_OPS = 127  # etcd's default --max-txn-ops is 128
STATUS_CALLS = 200  # status requests timed alone: the price of one watch probe


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def _counts(workloads: int) -> tuple[int, int]:
    """(services, policies) for W workloads: one service per 10 workloads, one policy per 50."""
    return max(1, workloads // 10), max(1, workloads // 50)


def _ns(i: int) -> str:
    return f"ns-{i % NAMESPACES:02d}"


def _service(j: int) -> dict[str, Any]:
    return {
        "name": f"svc-{j}",
        "namespace": _ns(j),
        "hostname": f"svc-{j}.{_ns(j)}.svc.cluster.local",
        "vips": [f"/{VIP_NET + j}"],
        "ports": {80: 8080},
    }


def _policy(k: int) -> dict[str, Any]:
    source = f"cluster.local/ns/{_ns(k)}/sa/sa-{k % ACCOUNTS}"
    return {
        "name": f"pol-{k}",
        "namespace": _ns(k),
        "scope": "WorkloadSelector",
        "action": "Allow",
        "rules": [[[{"principals": [source]}], [{"destinationPorts": [8080]}]]],
    }


def _mark(update: int) -> dict[str, Any]:
    return {
        "name": MARK_POLICY,
        "namespace": MARK_NAMESPACE,
        "scope": "Namespace",
        "action": "Deny",
        "rules": [[[{"destinationPorts": [MARK_BASE + update]}]]],
    }


def _workload(i: int, nodes: int, services: int, policies: int, account: str) -> dict[str, Any]:
    j, k = i % services, i % policies
    workload: dict[str, Any] = {
        "uid": f"{_ns(i)}/wl-{i}",
        "name": f"wl-{i}",
        "namespace": _ns(i),
        "serviceAccount": account,
        "workloadIps": [str(WORKLOAD_NET + i)],
        "protocol": "HBONE",
        "node": node_name(i % nodes),
        "services": {f"{_ns(j)}/svc-{j}.{_ns(j)}.svc.cluster.local": {80: 8080}},
    }
    if i % 2 == 0:  # half the workloads are selected by a policy
        workload["authorizationPolicies"] = [f"{_ns(k)}/pol-{k}"]
    return workload


def changed_workload(update: int, workloads: int) -> int:
    """The workload update `update` (1, 2, ...) changes: its service account becomes upd-N."""
    return (update - 1) % workloads


def mesh_document(nodes: int, workloads: int, update: int) -> dict[str, Any]:
    """The mesh after `update` updates (0: the initial push). Deterministic."""
    services, policies = _counts(workloads)
    accounts = {changed_workload(u, workloads): f"upd-{u}" for u in range(1, update + 1)}
    return {
        "workloads": [
            _workload(i, nodes, services, policies, accounts.get(i, f"sa-{i % ACCOUNTS}"))
            for i in range(workloads)
        ],
        "services": [_service(j) for j in range(services)],
        "policies": [_policy(k) for k in range(policies)] + [_mark(update)],
    }


def mesh_text(nodes: int, workloads: int, update: int) -> str:
    return json.dumps(mesh_document(nodes, workloads, update), separators=(",", ":"))


def mark_of(snapshot: Snapshot) -> int:
    """The update a snapshot holds (-1: none of this bench's meshes)."""
    policy = snapshot.policy_by_key.get(f"{MARK_NAMESPACE}/{MARK_POLICY}")
    if policy is None or not policy.rules:
        return -1
    return policy.rules[0][0][0].destination_ports[0] - MARK_BASE


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --- /proc probes (root, or the same user, may read them) ----------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / TICK


def _proc_field(path: str, name: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise ValueError(f"{path}: no {name}")


def rss_kib(pid: int) -> int:
    return _proc_field(f"/proc/{pid}/status", "VmRSS")


def read_bytes(pids: Iterable[int]) -> int:
    """Bytes the processes read through read()-like calls (rchar): here their sockets."""
    return sum(_proc_field(f"/proc/{pid}/io", "rchar") for pid in pids)


_STATUS_CALLS = re.compile(
    r'^grpc_server_handled_total\{[^}]*grpc_method="Status"[^}]*\} (\S+)$', re.M
)
_EVENTS = re.compile(r"^etcd_debugging_mvcc_events_total (\S+)$", re.M)


def etcd_counters(endpoints: Sequence[str]) -> tuple[int, int]:
    """(Status calls answered, watch events sent) summed over the members, from etcd's /metrics.
    Status calls are the probes of quiet watches (zt/fleet/etcdwatch.py): counting them lets the
    figures take their cost out of an update's."""
    status = events = 0
    for endpoint in endpoints:
        text = httpx.get(endpoint + "/metrics", timeout=5).text
        status += sum(int(float(v)) for v in _STATUS_CALLS.findall(text))
        events += sum(int(float(v)) for v in _EVENTS.findall(text))
    return status, events


@dataclass(frozen=True)
class Probe:
    """At one instant (or, from until(), over an interval): CPU seconds of the etcd members and
    of the node processes, bytes the node processes read, etcd's status-call and event counters."""

    at: float
    etcd_cpu: float
    node_cpu: float
    node_bytes: int
    status_calls: int
    events: int

    @classmethod
    def take(cls, etcd: Sequence[tuple[int, str]], node_pids: Sequence[int]) -> Probe:
        """`etcd`: (pid, client URL) of each member."""
        status_calls, events = etcd_counters([url for _, url in etcd])
        return cls(
            time.monotonic(),
            cpu_seconds(pid for pid, _ in etcd),
            cpu_seconds(node_pids),
            read_bytes(node_pids),
            status_calls,
            events,
        )

    def until(self, later: Probe) -> Probe:
        return Probe(
            later.at - self.at,
            later.etcd_cpu - self.etcd_cpu,
            later.node_cpu - self.node_cpu,
            later.node_bytes - self.node_bytes,
            later.status_calls - self.status_calls,
            later.events - self.events,
        )


# --- the node processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    nodes: tuple[str, ...]
    endpoints: tuple[str, ...]
    prefix: str
    list_timeout: float


@dataclass
class SimNode:
    """One simulated node: its source, and every swap its store made as (update, time.time())."""

    name: str
    mark: int = -1
    list_wall: float = 0.0
    list_cpu: float = 0.0
    swaps: list[tuple[int, float]] = field(default_factory=list)
    source: EtcdMeshSource | None = None
    task: asyncio.Task[None] | None = None

    def report(self) -> dict[str, Any]:
        status = self.source.status() if self.source is not None else {}
        return {
            "name": self.name,
            "list_wall": self.list_wall,
            "list_cpu": self.list_cpu,
            "swaps": self.swaps,
            "revision": status.get("revision", -1),
            "synced": status.get("synced"),
        }


class Worker:
    """The nodes of one process. Tells the parent ("mark", m) each time every one of its nodes
    holds update m or later, so the parent waits on events, not by polling."""

    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.nodes = [SimNode(name) for name in spec.nodes]
        self.low = -1

    def _connect(self) -> EtcdClient:
        return EtcdClient(list(self.spec.endpoints))

    async def _start(self, node: SimNode) -> None:
        # one list at a time in this process, so the process CPU around it is this node's own
        # (decode runs in a worker thread; the nodes already watching only take progress notes)
        wall, cpu = time.perf_counter(), time.process_time()
        source = EtcdMeshSource(self._connect, self.spec.prefix, registry=Registry())
        snapshot = await source.initial(self.spec.list_timeout)
        node.list_wall = time.perf_counter() - wall
        node.list_cpu = time.process_time() - cpu
        node.mark = mark_of(snapshot)
        store = SnapshotStore(snapshot)
        store.subscribe(lambda _old, new: self._swapped(node, new))
        source.attach(store)
        node.source = source
        node.task = asyncio.create_task(source.run(), name=f"mesh-{node.name}")

    def _swapped(self, node: SimNode, new: Snapshot) -> None:
        node.mark = mark_of(new)
        node.swaps.append((node.mark, time.time()))
        low = min(n.mark for n in self.nodes)
        if low > self.low:
            self.low = low
            self.conn.send(("mark", low))

    async def main(self) -> None:
        base = rss_kib(os.getpid())
        try:
            for node in self.nodes:
                await self._start(node)
            self.low = min(n.mark for n in self.nodes)
            self.conn.send(("ready", {"rss_base": base, "rss": rss_kib(os.getpid())}))
            while True:
                command = await asyncio.to_thread(self.conn.recv)
                if command == "report":
                    rss = rss_kib(os.getpid())
                    body = {"rss": rss, "nodes": self._reports(), "decodes": DECODES}
                    self.conn.send(("report", body))
                elif command == "stop":
                    return
        finally:
            await self._stop()

    def _reports(self) -> list[dict[str, Any]]:
        return [n.report() for n in self.nodes]

    async def _stop(self) -> None:
        tasks = [n.task for n in self.nodes if n.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# (time.time() at its end, its thread CPU seconds, objects it validated) of every decode in this
# node process; filled by _time_decodes
DECODES: list[tuple[float, float, int]] = []


def _time_decodes() -> None:
    """Record each MeshDecoder.decode's own CPU in this node process. A decode runs in a worker
    thread (zt/fleet/meshwatch.py), so its thread CPU is one node's cost of one apply, apart from
    the watches' upkeep and the other nodes sharing the process."""
    original = MeshDecoder.decode

    def decode(self: MeshDecoder, objects: Mapping[bytes, bytes]) -> Snapshot:
        start = time.thread_time()
        try:
            return original(self, objects)
        finally:
            DECODES.append((time.time(), time.thread_time() - start, self.validated))

    MeshDecoder.decode = decode  # type: ignore[method-assign]


def _worker_entry(conn: Connection, spec: WorkerSpec) -> None:
    """A node process: the nodes run on uvloop, as in a real node (zt/node/worker.py)."""
    _time_decodes()
    try:
        uvloop.run(Worker(conn, spec).main())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class BenchError(Exception):
    """The simulation could not finish (a node process failed, or the deadline passed)."""


@dataclass
class _Proc:
    process: BaseProcess
    conn: Connection
    low: int = -1
    ready: dict[str, int] | None = None
    report: dict[str, Any] | None = None


class Fleet:
    """The node processes, seen from the parent."""

    def __init__(self, procs: list[_Proc]) -> None:
        self.procs = procs

    @classmethod
    def start(cls, nodes: Sequence[str], procs: int, spec: WorkerSpec) -> Fleet:
        context = multiprocessing.get_context("spawn")  # no inherited event loop or sockets
        started: list[_Proc] = []
        for i in range(procs):
            mine = tuple(nodes[i::procs])
            if not mine:
                continue
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_entry, args=(child, replace(spec, nodes=mine)), daemon=True
            )
            process.start()
            child.close()
            started.append(_Proc(process, parent))
        return cls(started)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self.procs if p.process.pid is not None]

    def _pump(self, timeout: float) -> None:
        """Take every message that arrives within `timeout`."""
        by_conn = {id(p.conn): p for p in self.procs}
        for conn in mp_connection.wait([p.conn for p in self.procs], timeout):
            proc = by_conn[id(conn)]
            try:
                kind, body = proc.conn.recv()
            except EOFError:
                raise BenchError(f"node process {proc.process.pid} exited") from None
            if kind == "mark":
                proc.low = body
            elif kind == "ready":
                proc.ready = body
            elif kind == "report":
                proc.report = body
            elif kind == "error":
                raise BenchError(f"node process {proc.process.pid}: {body}")

    def wait(self, done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"deadline passed while waiting for {what}")
            self._pump(min(left, 1.0))

    def wait_ready(self, deadline: float) -> None:
        self.wait(lambda: all(p.ready is not None for p in self.procs), deadline, "initial lists")

    def wait_mark(self, mark: int, deadline: float) -> None:
        self.wait(lambda: all(p.low >= mark for p in self.procs), deadline, f"update {mark}")

    def reports(self, deadline: float) -> list[dict[str, Any]]:
        for p in self.procs:
            p.report = None
            p.conn.send("report")
        self.wait(lambda: all(p.report is not None for p in self.procs), deadline, "reports")
        return [p.report for p in self.procs if p.report is not None]

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.conn.send("stop")
        for p in self.procs:
            p.process.join(10)
            if p.process.is_alive():
                p.process.kill()  # only our own children
                p.process.join(5)
            p.conn.close()


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    nodes: int = 100
    workloads: int = 5000
    updates: int = 20
    procs: int = 4
    members: int = 1
    base: float = 3.0  # seconds of etcd alone, no client (its own raft ticks)
    alone: int = 3  # pushes measured before any node watches (etcd's cost of a push itself)
    idle: float = 5.0  # seconds measured with every node watching and nothing pushed
    deadline: float = 300.0  # the whole run, etcd start to teardown
    prefix: str = "/zt"


@dataclass(frozen=True)
class Report:
    settings: Settings
    first_mark: int  # the update every node held after its initial list
    marks: tuple[int, ...]  # the updates measured, in push order
    final_revision: int
    push_returned: Mapping[int, float]  # update -> time.time() its push returned
    nodes: tuple[Mapping[str, Any], ...]  # SimNode.report() of every node
    update_bytes: int  # key + value bytes of what one update changes
    initial_push_s: float
    initial_push_txns: int  # 1: one `zt config push`; more: etcd refused one txn that large
    push_s: tuple[float, ...]
    # base: etcd alone for Settings.base s; status: STATUS_CALLS status requests, nothing else;
    # alone: the pushes before any node watched; lists: every node's initial list; idle: every
    # node watching, nothing pushed; updates: the measured ones
    probes: Mapping[str, Probe]
    rss_per_node_kib: float
    etcd_rss_kib: int
    pids: tuple[int, ...]  # every process the run started (etcd, node processes): gone after it
    decodes: tuple[tuple[float, float, int], ...]  # DECODES of every node process
    # time.time() when every node had listed ("ready"), the measured updates began and ended
    walls: Mapping[str, float]

    def decode_cpu(self, *, updates: bool) -> list[float]:
        """Seconds of CPU per decode: of the measured updates', or of the initial lists'."""
        if updates:
            t0, t1 = self.walls["updates_start"], self.walls["updates_end"]
            return [cpu for end, cpu, _ in self.decodes if t0 <= end <= t1]
        return [cpu for end, cpu, _ in self.decodes if end <= self.walls["ready"]]

    @property
    def updates_done(self) -> int:
        return len(self.marks)

    def push_to_apply(self) -> list[float]:
        """Seconds from a push's return to each node's swap, over every (node, measured update)."""
        out: list[float] = []
        for node in self.nodes:
            at = {mark: t for mark, t in node["swaps"]}
            out += [at[m] - self.push_returned[m] for m in self.marks if m in at]
        return out


class _Clock:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _mesh_input(s: Settings, update: int) -> push.MeshText:
    return push.MeshText(mesh_text(s.nodes, s.workloads, update), "fleet-scale.json")


async def _push(client: EtcdClient, s: Settings, update: int) -> tuple[int, float]:
    """(revision, seconds) of one `zt config push` of the mesh after `update` updates."""
    mesh = _mesh_input(s, update)
    start = time.perf_counter()
    result = await push.push(client, s.prefix, mesh)
    return result.revision, time.perf_counter() - start


async def _seed(client: EtcdClient, s: Settings) -> tuple[float, int]:
    """The initial mesh: one push when etcd takes a txn that large, else (etcd's default
    --max-txn-ops is 128) the same objects in SEED_OPS-op txns. (seconds, txns)."""
    start = time.perf_counter()
    try:
        await _push(client, s, 0)
        return time.perf_counter() - start, 1
    except push.PushTooLarge:
        pass
    objects = sorted(push.load_objects(s.prefix, _mesh_input(s, 0)).items())
    for i in range(0, len(objects), SEED_OPS):
        await client.txn([], [Put(k, v) for k, v in objects[i : i + SEED_OPS]])
    return time.perf_counter() - start, math.ceil(len(objects) / SEED_OPS)


async def _update_bytes(client: EtcdClient, s: Settings, update: int) -> int:
    """Key + value bytes of the two objects one update rewrites (what each watcher receives)."""
    i = changed_workload(update, s.workloads)
    wanted = [keys.workload_key(s.prefix, f"{_ns(i)}/wl-{i}")]
    wanted.append(keys.policy_key(s.prefix, MARK_NAMESPACE, MARK_POLICY))
    total = 0
    for key in wanted:
        kv = await client.get(key)
        total += len(key) + (len(kv.value) if kv is not None else 0)
    return total


class _Run:
    """One simulation's steps, in order: seed, etcd alone, the fleet's lists, idle, updates."""

    def __init__(
        self, s: Settings, cluster: EtcdCluster, client: EtcdClient, clock: _Clock
    ) -> None:
        self.s, self.cluster, self.client, self.clock = s, cluster, client, clock
        self.etcd = [(m.pid, m.client_url) for m in cluster.members]
        self.etcd_pids = [m.pid for m in cluster.members]
        self.probes: dict[str, Probe] = {}
        self.walls: dict[str, float] = {}
        self.seeded = (0.0, 0)

    async def before_fleet(self) -> None:
        self.seeded = await _seed(self.client, self.s)
        start = Probe.take(self.etcd, [])
        await asyncio.sleep(self.s.base)
        mid = Probe.take(self.etcd, [])
        async with httpx.AsyncClient(trust_env=False) as http:  # what one watch probe costs etcd
            for _ in range(STATUS_CALLS):
                await http.post(self.cluster.endpoints[0] + "/v3/maintenance/status", json={})
        after = Probe.take(self.etcd, [])
        for update in range(1, self.s.alone + 1):
            await _push(self.client, self.s, update)
        self.probes["base"] = start.until(mid)
        self.probes["status"] = mid.until(after)
        self.probes["alone"] = after.until(Probe.take(self.etcd, []))

    async def with_fleet(self, fleet: Fleet) -> Report:
        s, clock = self.s, self.clock

        def probe() -> Probe:
            return Probe.take(self.etcd, fleet.pids)

        start = probe()
        await asyncio.to_thread(fleet.wait_ready, clock.end)
        self.walls["ready"] = time.time()
        self.probes["lists"] = start.until(probe())
        warm = s.alone + 1  # one unmeasured update: every watch is open and has delivered once
        await _push(self.client, s, warm)
        await asyncio.to_thread(fleet.wait_mark, warm, clock.end)
        start = probe()
        await asyncio.sleep(min(s.idle, max(0.0, clock.left() - 60)))
        self.probes["idle"] = start.until(probe())
        start = probe()
        self.walls["updates_start"] = time.time()
        pushed = await self._updates(fleet, warm)
        self.walls["updates_end"] = time.time()
        self.probes["updates"] = start.until(probe())
        return await self._report(fleet, pushed)

    async def _updates(self, fleet: Fleet, warm: int) -> list[tuple[int, int, float, float]]:
        """Push one update at a time, each once every node holds the last: (update, revision,
        push seconds, time.time() the push returned)."""
        pushed: list[tuple[int, int, float, float]] = []
        slowest = 0.0
        for mark in range(warm + 1, warm + 1 + self.s.updates):
            if self.clock.left() < 2 * slowest + 20:  # time for the reports and the teardown
                break
            began = time.monotonic()
            revision, took = await _push(self.client, self.s, mark)
            pushed.append((mark, revision, took, time.time()))
            await asyncio.to_thread(fleet.wait_mark, mark, self.clock.end)
            slowest = max(slowest, time.monotonic() - began)
        return pushed

    async def _report(self, fleet: Fleet, pushed: list[tuple[int, int, float, float]]) -> Report:
        reports = await asyncio.to_thread(fleet.reports, self.clock.end)
        nodes = tuple(n for r in reports for n in r["nodes"])
        ready = [p.ready for p in fleet.procs if p.ready is not None]
        grown = sum(r["rss"] for r in reports) - sum(r["rss_base"] for r in ready)
        last = pushed[-1][0] if pushed else self.s.alone + 1
        return Report(
            settings=self.s,
            first_mark=self.s.alone,
            marks=tuple(p[0] for p in pushed),
            final_revision=pushed[-1][1] if pushed else 0,
            push_returned={p[0]: p[3] for p in pushed},
            nodes=nodes,
            update_bytes=await _update_bytes(self.client, self.s, last),
            initial_push_s=self.seeded[0],
            initial_push_txns=self.seeded[1],
            push_s=tuple(p[2] for p in pushed),
            probes=dict(self.probes),
            rss_per_node_kib=grown / max(1, len(nodes)),
            etcd_rss_kib=sum(rss_kib(pid) for pid in self.etcd_pids),
            pids=(*self.etcd_pids, *fleet.pids),
            decodes=tuple(tuple(d) for r in reports for d in r["decodes"]),
            walls=dict(self.walls),
        )


async def run(s: Settings) -> Report:
    """One simulation, bounded by `s.deadline`; etcd and every node process are gone after it."""
    clock = _Clock(s.deadline)
    cluster = await asyncio.to_thread(partial(EtcdCluster.start, None, s.members, tls=False))
    try:
        async with EtcdClient(cluster.endpoints) as client:
            steps = _Run(s, cluster, client, clock)
            await steps.before_fleet()
            timeout = max(30.0, clock.left() - 30)
            spec = WorkerSpec((), tuple(cluster.endpoints), s.prefix, timeout)
            fleet = Fleet.start([node_name(i) for i in range(s.nodes)], s.procs, spec)
            try:
                return await steps.with_fleet(fleet)
            finally:
                await asyncio.to_thread(fleet.stop)
    finally:
        await asyncio.to_thread(cluster.close)


# --- the figures ----------------------------------------------------------------------------------


def _per_s(cpu: float, probe: Probe) -> float:
    return cpu * 1000 / max(probe.at, 1e-9)


def figures(r: Report, project_to: int = 1000) -> dict[str, float]:
    """Every printed figure. *_ms: CPU milliseconds (wall, for latencies and lists); *_ms_per_s:
    CPU ms per second of wall (1000 = one core). What an idle fleet costs (progress notifications
    down every watch; status probes of quiet watches, zt/fleet/etcdwatch.py) is measured per node
    and second while idle and taken out of the list and node figures by time; status probes by
    etcd's count of them, at the price of one measured alone; etcd's own ticking (base) by time.
    etcd's fan-out is given as an upper bound (see fanout_max_ms)."""
    n, u, pr = len(r.nodes), max(1, r.updates_done), r.probes
    base, alone, lists, idle, upd = pr["base"], pr["alone"], pr["lists"], pr["idle"], pr["updates"]
    apply = [x * 1000 for x in r.push_to_apply()]
    list_wall = [float(node["list_wall"]) * 1000 for node in r.nodes]
    decode_upd = [x * 1000 for x in r.decode_cpu(updates=True)]
    decode_list = [x * 1000 for x in r.decode_cpu(updates=False)]
    base_ms_s = _per_s(base.etcd_cpu, base)

    def etcd_net(p: Probe) -> float:
        """etcd CPU ms of an interval beyond its ticking and the status probes it answered."""
        return p.etcd_cpu * 1000 - base_ms_s * p.at - status_ms * p.status_calls

    status = pr["status"]
    status_ms = (status.etcd_cpu * 1000 - base_ms_s * status.at) / max(1, status.status_calls)
    alone_ms = etcd_net(alone) / max(1, r.settings.alone)
    idle_node_ms_s = etcd_net(idle) / max(idle.at, 1e-9) / n
    probes_node_s = idle.status_calls / max(idle.at, 1e-9) / n
    list_ms = (etcd_net(lists) - idle_node_ms_s * n / 2 * lists.at) / n  # half were up, on average
    update_ms = upd.etcd_cpu * 1000 / u
    # Sending one update's events down N watches is cheap next to what the same seconds cost
    # anyway (progress notes, probes, ticking): a net figure drowns in their noise. The bound is
    # robust: everything etcd did per update beyond the push itself, per node.
    fanout_max_ms = max(0.0, update_ms - alone_ms)
    node_idle_ms_s = _per_s(idle.node_cpu, idle) / n
    node_update_ms = (upd.node_cpu * 1000 - node_idle_ms_s * n * upd.at) / (u * n)
    bytes_idle_s = idle.node_bytes / max(idle.at, 1e-9) / n
    bytes_update = (upd.node_bytes - bytes_idle_s * n * upd.at) / (u * n)
    bytes_list = (lists.node_bytes - bytes_idle_s * n / 2 * lists.at) / n
    full = r.settings.workloads // 2  # a decode validating this many objects was a (re-)list
    relists = sum(1 for end, _, validated in r.decodes if validated >= full and _in(r, end))
    services, policies = _counts(r.settings.workloads)
    out: dict[str, float] = {
        "nodes": n,
        "workloads": r.settings.workloads,
        "services": services,
        "policies": policies + 1,
        "members": r.settings.members,
        "procs": r.settings.procs,
        "updates": r.updates_done,
        "pairs": len(apply),
        "push_to_apply_p50_ms": percentile(apply, 0.5),
        "push_to_apply_p99_ms": percentile(apply, 0.99),
        "push_to_apply_max_ms": max(apply, default=math.nan),
        "list_p50_ms": percentile(list_wall, 0.5),
        "list_p99_ms": percentile(list_wall, 0.99),
        "list_decode_cpu_p50_ms": percentile(decode_list, 0.5),
        "list_decode_cpu_p99_ms": percentile(decode_list, 0.99),
        "initial_push_s": r.initial_push_s,
        "initial_push_txns": r.initial_push_txns,
        "push_p50_ms": percentile([x * 1000 for x in r.push_s], 0.5),
        "update_bytes": r.update_bytes,
        "etcd_cpu_base_ms_per_s": base_ms_s,
        "etcd_cpu_per_status_ms": status_ms,
        "etcd_cpu_per_push_alone_ms": alone_ms,
        "etcd_cpu_per_list_ms": list_ms,
        "etcd_cpu_idle_per_node_ms_per_s": idle_node_ms_s,
        "etcd_status_per_node_per_s_idle": probes_node_s,
        "etcd_status_per_node_per_update": upd.status_calls / (u * n),
        "etcd_cpu_per_update_ms": update_ms,
        "etcd_cpu_fanout_per_update_per_node_max_ms": fanout_max_ms / n,
        "etcd_events_per_update": upd.events / u,
        "etcd_rss_kib": r.etcd_rss_kib,
        "node_decode_cpu_p50_ms": percentile(decode_upd, 0.5),
        "node_decode_cpu_p99_ms": percentile(decode_upd, 0.99),
        "node_relists": relists,
        "node_cpu_per_update_per_node_ms": node_update_ms,
        "node_cpu_idle_per_node_ms_per_s": node_idle_ms_s,
        "node_bytes_per_update_per_node": bytes_update,
        "node_bytes_idle_per_node_per_s": bytes_idle_s,
        "node_bytes_per_list": bytes_list,
        "rss_per_node_kib": r.rss_per_node_kib,
    }
    p = project_to
    idle_ms_s = idle_node_ms_s + status_ms * probes_node_s  # per node
    out |= {
        "proj_nodes": p,
        "proj_etcd_cpu_per_update_max_ms": alone_ms + fanout_max_ms / n * p,
        "proj_etcd_idle_cores": (base_ms_s + idle_ms_s * p) / 1000,
        "proj_fanout_bytes_per_update": bytes_update * p,
        "proj_etcd_cpu_relist_all_s": list_ms * p / 1000,
        "proj_relist_all_bytes": bytes_list * p,
    }
    return out


def _in(r: Report, end: float) -> bool:
    return r.walls["updates_start"] <= end <= r.walls["updates_end"]


def _fmt(value: float) -> str:
    if isinstance(value, int) or (value == int(value) and abs(value) >= 100):
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def lines(r: Report) -> list[str]:
    """`FLEET_SCALE key=value ...` lines, grouped (shape, latency, etcd, node, projection)."""
    f = figures(r)
    groups = (
        ("nodes", "workloads", "services", "policies", "members", "procs", "updates", "pairs"),
        tuple(k for k in f if k.startswith(("push", "list", "initial", "update_bytes"))),
        tuple(k for k in f if k.startswith("etcd")),
        tuple(k for k in f if k.startswith(("node_", "rss"))),
        tuple(k for k in f if k.startswith("proj")),
    )
    return ["FLEET_SCALE " + " ".join(f"{k}={_fmt(f[k])}" for k in g) for g in groups]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="N simulated fleet nodes against one etcd (docs/fleet.md)"
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--workloads", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--procs", type=int, default=4, help="node processes")
    parser.add_argument("--members", type=int, default=1, choices=(1, 3), help="etcd members")
    parser.add_argument("--deadline", type=float, default=300.0, help="hard cap, seconds")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.workloads < 1 or args.updates < 1 or args.procs < 1:
        parser.error("--nodes, --workloads, --updates and --procs must be >= 1")
    settings = Settings(
        nodes=args.nodes,
        workloads=args.workloads,
        updates=args.updates,
        procs=min(args.procs, args.nodes),
        members=args.members,
        deadline=min(args.deadline, 300.0),
    )
    try:
        report = asyncio.run(run(settings))
    except BenchError as exc:
        print(f"fleet_scale: {exc}", file=sys.stderr)
        return 1
    for line in lines(report):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
