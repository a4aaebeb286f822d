"""The fleet lab's control host (`zt lab up --control etcd`, docs/fleet.md): a 3-member etcd with
TLS and auth and the signer (`zt ca serve`) in `zt-<p>-ctl`; the mesh pushed with `zt config push`;
each node joined with its own one-time token (`zt ca token create`, `zt node join` inside the node's
namespace) and run as `zt run --etcd ... --state-dir ...`.

Everything goes through the real CLI, as an operator would type it, run inside the namespace that
operator would be on; only the lab's probes (`config get/push`, the demo rows, the tests) talk to
etcd in-process, with the root credentials the lab keeps in its state dir (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zt.capture.netns import run_in_netns
from zt.errors import UsageError
from zt.fleet import push
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdError
from zt.fleet.etcdserver import ETCD_BIN, EtcdTls, MemberSpec, cluster_argv
from zt.fleet.push import MeshText
from zt.lab import runner, topology
from zt.lab.state import LabState, Proc, save, start_time

T = TypeVar("T")

MEMBERS = ("etcd1", "etcd2", "etcd3")
CLIENT_PORT, PEER_PORT, PORT_STEP = 2379, 2380, 100  # member i: 2379+100i / 2380+100i
PREFIX = "/zt"
ROOT_USER = "root"
SIGNER = "signer"
CLI_TIMEOUT = 60.0


class ControlStepFailed(RuntimeError):
    """A control-plane command of the lab failed; the message holds its output's tail."""


@dataclass(frozen=True)
class Control:
    """Where the fleet lab's control plane lives, derived from the lab state (pure)."""

    state: LabState

    @property
    def netns(self) -> str:
        ns = self.state.plan.control_netns
        if ns is None:
            raise ValueError(f"lab {self.state.name!r} has no control host (--control file)")
        return ns

    @property
    def host(self) -> str:
        return str(self.state.plan.control_ipv4)

    def client_url(self, i: int) -> str:
        return f"https://{self.host}:{CLIENT_PORT + PORT_STEP * i}"

    def peer_url(self, i: int) -> str:
        return f"https://{self.host}:{PEER_PORT + PORT_STEP * i}"

    @property
    def endpoints(self) -> list[str]:
        return [self.client_url(i) for i in range(len(MEMBERS))]

    @property
    def urls(self) -> str:
        return ",".join(self.endpoints)

    @property
    def etcd_dir(self) -> Path:
        return self.state.dir / "etcd"

    @property
    def tls_dir(self) -> Path:
        return self.etcd_dir / "tls"

    @property
    def cacert(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def password_file(self) -> Path:
        return self.state.dir / "etcd-root.password"

    @property
    def ca_dir(self) -> Path:
        return self.state.ca_dir

    def member(self, i: int) -> MemberSpec:
        return MemberSpec(
            MEMBERS[i], self.etcd_dir / MEMBERS[i], self.client_url(i), self.peer_url(i)
        )

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{MEMBERS[i]}={self.peer_url(i)}" for i in range(len(MEMBERS)))

    def root_flags(self) -> list[str]:
        """The etcd flags of every operator command: endpoints, the etcd CA, root credentials."""
        return [
            "--etcd", self.urls, "--etcd-cacert", str(self.cacert),
            "--etcd-user", ROOT_USER, "--etcd-password-file", str(self.password_file),
        ]  # fmt: skip

    def client(self, timeout: float = 5.0) -> EtcdClient:
        """A root client (use it inside the control namespace: see `in_control`)."""
        password = self.password_file.read_text().strip()
        return EtcdClient(
            self.endpoints, cacert=self.cacert, user=ROOT_USER, password=password, timeout=timeout
        )

    def log(self, what: str) -> Path:
        return self.state.dir / f"{what}.log"


def in_netns(netns: str, work: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
    """Run a coroutine to completion on a fresh event loop in a thread inside netns (its sockets
    live there)."""
    return run_in_netns(netns, lambda: asyncio.run(work()), timeout=timeout)


def in_control(
    control: Control, work: Callable[[EtcdClient], Awaitable[T]], timeout: float = 30.0
) -> T:
    """`work` with a root client, inside the control namespace."""

    async def go() -> T:
        async with control.client() as client:
            return await work(client)

    return in_netns(control.netns, go, timeout)


# -- commands in a namespace ----------------------------------------------------------------------
def zt_in(netns: str, args: list[str], log: Path, timeout: float = CLI_TIMEOUT) -> str:
    """`zt ARGS` inside netns (network namespace only, as the daemons); its stdout. Output also
    goes to `log`; a non-zero exit raises ControlStepFailed with the tail of what it said."""
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", str(runner.ZT), *args],
        capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    with open(log, "a") as out:
        out.write(f"$ zt {' '.join(args)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n")
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise ControlStepFailed(
            f"`zt {args[0]} {args[1]}` exited {done.returncode}: {' | '.join(said)}"
        )
    return done.stdout


# -- etcd -----------------------------------------------------------------------------------------
def write_password(control: Control) -> None:
    """The root password, 0600 from its first byte (created, never widened afterwards)."""
    fd = os.open(control.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")


def start_member(control: Control, i: int, *, existing: bool) -> Proc:
    """One member inside the control namespace, in its own session (the lab stops it by pid)."""
    spec = control.member(i)
    spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = EtcdTls(control.tls_dir)
    argv = cluster_argv(spec, control.initial_cluster, tls, state="existing" if existing else "new")
    log = control.log(f"etcd-{spec.name}")
    pid = runner.spawn(control.netns, argv, log)
    return Proc(f"etcd:{spec.name}", pid, start_time(pid) or 0, str(log))


def start_etcd(control: Control, record: Callable[[Proc], None]) -> str:
    if not Path(ETCD_BIN).exists():
        raise UsageError(
            f"--control etcd: {ETCD_BIN} not found, expected Debian's etcd-server "
            "(`make setup`, or apt-get install etcd-server etcd-client)"
        )
    control.etcd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    EtcdTls.create(control.tls_dir, [control.host, "127.0.0.1", "localhost"])
    write_password(control)
    procs = [start_member(control, i, existing=False) for i in range(len(MEMBERS))]
    for proc in procs:
        record(proc)
    wait_healthy(control, timeout=30.0, procs=procs)
    return f"{len(MEMBERS)} members on {control.urls} (TLS; etcd CA {control.cacert})"


def wait_healthy(control: Control, timeout: float, procs: list[Proc] | None = None) -> None:
    """Every member answers and agrees on a leader; a member of `procs` that exits meanwhile
    ends the wait at once, with its log's tail."""

    async def check() -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for proc in procs or []:
                if not runner.alive(proc.pid):
                    raise ControlStepFailed(
                        f"etcd member {proc.role} exited:\n{runner.tail(Path(proc.log), 5)}"
                    )
            try:
                leaders = set()
                for url in control.endpoints:
                    async with EtcdClient([url], cacert=control.cacert, timeout=1.0) as c:
                        leaders.add(int(str((await c.status()).get("leader", 0))))
                if len(leaders) == 1 and 0 not in leaders:
                    return
                last = f"leaders seen: {sorted(leaders)}"
            except (EtcdError, OSError) as exc:  # OSError: ssl errors while a member starts
                last = (str(exc) or type(exc).__name__).splitlines()[0]
            await asyncio.sleep(0.1)
        raise TimeoutError(f"etcd not healthy after {timeout:g} s: {last}")

    in_netns(control.netns, check, timeout + 10)


def member_procs(state: LabState) -> list[Proc]:
    return [p for p in state.procs if p.role.startswith("etcd:")]


def signal_members(state: LabState, sig: signal.Signals) -> None:
    """SIGSTOP / SIGCONT every member (a frozen cluster: TCP stays up, nothing answers)."""
    for proc in member_procs(state):
        if start_time(proc.pid) == proc.start_time:
            os.kill(proc.pid, sig)


# -- CA, signer, mesh, joins ---------------------------------------------------------------------
def init_ca(control: Control) -> str:
    out = zt_in(
        control.netns,
        ["ca", "init", "--ca-dir", str(control.ca_dir), *control.root_flags()],
        control.log("control"),
    )
    return out.strip().splitlines()[-1] if out.strip() else str(control.ca_dir)


def start_signer(control: Control, *, leaf_lifetime: float | None = None) -> Proc:
    """`zt ca serve` in the control namespace; with `leaf_lifetime` (seconds) the lab-only signer
    of zt.lab.shortsigner instead (`zt ca serve` allows no leaf under an hour)."""
    if leaf_lifetime is None:
        head = [str(runner.ZT), "ca", "serve"]
    else:
        head = [sys.executable, "-m", "zt.lab.shortsigner", "--leaf-lifetime", f"{leaf_lifetime:g}"]
    argv = [*head, "--ca-dir", str(control.ca_dir), *control.root_flags()]
    log = control.log(SIGNER)
    pid = runner.spawn(control.netns, argv, log)
    return Proc(SIGNER, pid, start_time(pid) or 0, str(log))


def push_file(control: Control, path: Path) -> str:
    out = zt_in(
        control.netns, ["config", "push", str(path), *control.root_flags()], control.log("control")
    )
    return out.strip().splitlines()[-1] if out.strip() else "pushed"


def create_token(control: Control, node: str) -> str:
    out = zt_in(
        control.netns,
        ["ca", "token", "create", "--node", node, *control.root_flags()],
        control.log("control"),
    )
    lines = [line for line in out.split() if line.startswith("ztjoin-")]
    if not lines:
        raise ControlStepFailed(f"`zt ca token create --node {node}` printed no token: {out!r}")
    return lines[-1]


def join_node(control: Control, node: str, netns: str, token: str) -> None:
    """`zt node join` inside the node's namespace, with a token made on the control host."""
    state_dir = control.state.node_state_dir(node)
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "node", "join", "--etcd", control.urls, "--etcd-cacert", str(control.cacert),
        "--token", token, "--node", node, "--state-dir", str(state_dir),
    ]  # fmt: skip
    zt_in(netns, argv, control.log(f"join-{node}"))


def join_all(control: Control, tokens: dict[str, str]) -> str:
    nodes = control.state.plan.nodes
    with ThreadPoolExecutor(len(nodes)) as pool:
        jobs = [pool.submit(join_node, control, n.name, n.netns, tokens[n.name]) for n in nodes]
        for job in jobs:
            job.result()
    return (
        f"{len(nodes)} node(s) joined, one token each (state dirs in {control.state.dir / 'nodes'})"
    )


# -- cutting nodes off ----------------------------------------------------------------------------
@contextmanager
def control_cut(state: LabState) -> Iterator[None]:
    """Every node loses the control host (its fabric link goes down) until the block ends."""
    topology.set_control_link(state.plan, up=False)
    try:
        yield
    finally:
        topology.set_control_link(state.plan, up=True)


# -- the lab's mesh document ----------------------------------------------------------------------
def push_document(state: LabState, document: object, source: str = "lab") -> int:
    """Push a mesh document (a dict) with the root credentials; the txn's revision."""
    text = MeshText(json.dumps(document), source)
    result = in_control(Control(state), lambda c: push.push(c, PREFIX, text))
    return result.revision


def get_document(state: LabState) -> tuple[dict[str, list[object]], int]:
    return in_control(Control(state), lambda c: push.get(c, PREFIX))


# -- status ---------------------------------------------------------------------------------------
def _alive_pid(proc: Proc | None) -> int | None:
    return proc.pid if proc is not None and start_time(proc.pid) == proc.start_time else None


def control_status(state: LabState) -> dict[str, object]:
    """File mode: the mesh file and CA dir. Fleet mode: etcd members, the signer, the CA dir."""
    if not state.fleet:
        return {"mode": "file", "config": str(state.config), "ca_dir": str(state.ca_dir)}
    ctl = Control(state)
    return {
        "mode": "etcd",
        "netns": ctl.netns,
        "ip": ctl.host,
        "etcd": [
            {
                "name": name,
                "pid": _alive_pid(state.proc(f"etcd:{name}")),
                "endpoint": ctl.client_url(i),
            }
            for i, name in enumerate(MEMBERS)
        ],
        "etcd_cacert": str(ctl.cacert),
        "etcd_password_file": str(ctl.password_file),
        "prefix": PREFIX,
        "signer": {"pid": _alive_pid(state.proc(SIGNER)), "log": str(ctl.log(SIGNER))},
        "ca_dir": str(state.ca_dir),
    }


# -- operating the control plane of a running lab (the demo and the fleet tests) -----------------
def leader(state: LabState) -> int:
    """Index (into MEMBERS) of the member that says it is the leader."""
    ctl = Control(state)

    async def ask() -> int:
        for i, url in enumerate(ctl.endpoints):
            with contextlib.suppress(EtcdError, OSError):
                async with EtcdClient([url], cacert=ctl.cacert, timeout=1.0) as c:
                    status = await c.status()
                header = status.get("header")
                if isinstance(header, dict) and header.get("member_id") == status.get("leader"):
                    return i
        raise EtcdError("no etcd member of the lab says it is the leader")

    return in_netns(ctl.netns, ask)


def member_proc(state: LabState, i: int) -> Proc:
    proc = state.proc(f"etcd:{MEMBERS[i]}")
    if proc is None:
        raise ValueError(f"lab {state.name!r} has no etcd member {MEMBERS[i]}")
    return proc


def kill_member(state: LabState, i: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """SIGKILL (a crash) or SIGTERM (a clean stop) one member, and wait until it is gone."""
    proc = member_proc(state, i)
    if start_time(proc.pid) == proc.start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a frozen member cannot act on SIGTERM
            os.kill(proc.pid, sig)
        runner.stop(proc.pid, deadline=5.0)


def restart_member(state: LabState, i: int) -> LabState:
    """Start a stopped member again on its data dir; the new pid is saved in the lab state."""
    kill_member(state, i, signal.SIGTERM)
    state = state.with_proc(start_member(Control(state), i, existing=True))
    save(state)
    return state


def restart_signer(state: LabState, *, leaf_lifetime: float | None = None) -> LabState:
    """Stop the signer and start it again (with `leaf_lifetime`: the lab-only short-leaf one)."""
    old = state.proc(SIGNER)
    if old is not None and start_time(old.pid) == old.start_time:
        runner.stop(old.pid)
    state = state.with_proc(start_signer(Control(state), leaf_lifetime=leaf_lifetime))
    save(state)
    return state


def compact(state: LabState, revision: int) -> None:
    in_control(Control(state), lambda c: c.compact(revision))
