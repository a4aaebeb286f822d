"""The node tier's harness: a real lab (two nodes, two pods each, `zt run` per node) and
probes of what the daemons expose (access logs, metrics, fds, BPF maps)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zt.addr import parse_destination
from zt.capture.netns import dial_marked
from zt.hbone.request import ConnectRequest
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import cached_client_context
from zt.lab import control, logs, runner
from zt.lab.state import LabState
from zt.lab.topology import LabPlan, PodPlan
from zt.proxy.client import open_tunnel
from zt.proxy.driver import HboneDriver
from zt.proxy.errors import TunnelRefused
from zt.proxy.tls import server_peer_check
from zt.timescale import scaled

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
GENERATION = "zt_config_generation"  # config snapshots a node loaded


def identity(pod: PodPlan) -> str:
    return f"spiffe://cluster.local/ns/lab/sa/sa-{pod.name}"


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m is None or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@dataclass
class Lab:
    state: LabState

    @property
    def plan(self) -> LabPlan:
        return self.state.plan

    def pod(self, name: str) -> PodPlan:
        return next(p for p in self.plan.pods if p.name == name)

    def log(self, node: str) -> Path:
        return self.state.dir / f"{node}.log"

    def app_log(self, pod: str) -> Path:
        return self.state.dir / f"app-{pod}.log"

    def pid(self, node: str) -> int:
        proc = self.state.node_proc(node)
        assert proc is not None
        return proc.pid

    def metrics(self, node: str) -> str:
        status, body = runner.http_get(self.plan.node(node).netns, runner.METRICS_PORT, "/metrics")
        assert status == 200, body
        return body

    def rss_kib(self, node: str) -> int:
        status = Path(f"/proc/{self.pid(node)}/status").read_text()
        return int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )

    def fds(self, node: str) -> int:
        return len(os.listdir(f"/proc/{self.pid(node)}/fd"))

    def map_entries(self, node: str) -> dict[str, int]:
        """Entries of each pinned hash map of the node's capture (bpftool)."""
        pins = runner.pin_dir(self.plan, self.plan.node(node))
        counts = {}
        # the hash maps (zt_orig_app / zt_orig_proxy are socket storage: gone with their sockets)
        for name in ("zt_pods", "zt_ips", "zt_orig_addr"):
            done = subprocess.run(
                ["bpftool", "-j", "map", "dump", "pinned", str(pins / name)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            counts[name] = len(json.loads(done.stdout or "[]"))
        return counts

    def wait_record(
        self, node: str, offset: int, timeout: float = 5.0, **fields: str
    ) -> logs.AccessRecord:
        want = {k.replace("__", "."): v for k, v in fields.items()}
        rec = logs.wait_for(
            self.log(node),
            offset,
            lambda r: all(r.get(k) == v for k, v in want.items()),
            scaled(timeout),
        )
        assert rec is not None, (
            f"no access record {want} on {node} after byte {offset}:\n"
            + runner.tail(self.log(node), 15)
        )
        return rec

    def offsets(self) -> dict[str, int]:
        return {n.name: logs.size(self.log(n.name)) for n in self.plan.nodes}

    def write_config(self, text: str) -> None:
        """Atomic rename, as an operator's tooling would (the daemon polls ~1 s)."""
        tmp = self.state.config.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.state.config)

    def restart(self, node: str) -> None:
        self.state = control.restart_node(self.state, node)


@contextmanager
def running_lab(tag: str, node_args: tuple[str, ...] = ()) -> Iterator[Lab]:
    name = f"{tag}{os.getpid() % 1000}"
    try:
        lab = Lab(control.up(control.UpOptions(name=name, node_args=node_args)))
        yield lab
    finally:
        control.down(name)
        assert control.down(name) == []


@contextmanager
def handed_on(lab: Lab) -> Iterator[Lab]:
    """A module's turn on the shared lab (tests/node/conftest.py): it starts with both daemons
    alive and passes the lab on with them alive and ready on the mesh file it found (a module
    that killed a daemon or left a mesh edit behind gets them restored here)."""
    original = lab.state.config.read_text()
    _restore(lab, original)
    try:
        yield lab
    finally:
        _restore(lab, original)


def _restore(lab: Lab, config: str) -> None:
    nodes = [node.name for node in lab.plan.nodes]
    for node in nodes:
        if not runner.alive(lab.pid(node)):
            lab.restart(node)  # waits until ready
    if lab.state.config.read_text() == config:
        return
    loaded = {node: metric(lab.metrics(node), GENERATION) for node in nodes}
    lab.write_config(config)
    deadline = time.monotonic() + scaled(15)
    for node in nodes:  # each loads it (the daemons poll ~1 s), else starts afresh on it
        while metric(lab.metrics(node), GENERATION) <= loaded[node]:
            if time.monotonic() > deadline:
                lab.restart(node)
                break
            time.sleep(0.1)


def hbone_status(lab: Lab, src: PodPlan, dst: PodPlan, authority_host: str, port: int) -> int:
    """CONNECT from `src`'s identity (a certificate of the lab CA) straight to `dst`'s :15008, on
    a marked socket from inside src (so capture leaves it alone); the response status.
    `authority_host`: an IP, or a service hostname (`:authority name:port`)."""
    ca = CertificateAuthority.load(lab.state.ca_dir)
    cert = ca.issue(SpiffeId.parse(identity(src)), now=time.time())
    sock = dial_marked(src.netns, (str(dst.ipv4), 15008))

    async def ask() -> int:
        loop = asyncio.get_running_loop()
        check = server_peer_check([SpiffeId.parse(identity(dst))])
        _, driver = await loop.create_connection(
            lambda: HboneDriver("client", peer_check=check),
            sock=sock,
            ssl=cached_client_context(cert),
            server_hostname="",
        )
        await driver.ready
        request = ConnectRequest(parse_destination(f"{authority_host}:{port}"))
        try:
            stream = await open_tunnel(driver, request, timeout=10)
            stream.reset(0x8)  # CANCEL: we only wanted the status
            return 200
        except TunnelRefused as exc:
            return exc.status
        finally:
            driver.close()

    return asyncio.run(ask())


__all__ = ["Lab", "handed_on", "hbone_status", "identity", "metric", "running_lab"]
