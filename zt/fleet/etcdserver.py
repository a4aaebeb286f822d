"""Run etcd members (Debian's /usr/bin/etcd, 3.4) for the lab and the tests: argv, and a cluster
object that starts, kills, freezes and restarts members it owns.

Timings are tuned for loopback and tests (heartbeat 50 ms, election 500 ms): a killed leader is
replaced in about a second. Data dirs default to /dev/shm (tmpfs) because etcd 3.4 has no
--unsafe-no-fsync and fsync on a disk dominates its latency.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdError
from zt.fleet.etcdtls import EtcdTls

__all__ = [
    "EtcdCluster",
    "EtcdServerError",
    "EtcdTls",
    "Member",
    "MemberSpec",
    "bootstrap_auth",
    "cluster_argv",
    "free_ports",
]

ETCD_BIN = "/usr/bin/etcd"
ETCDCTL_BIN = "/usr/bin/etcdctl"
START_TIMEOUT_S = 20.0


class EtcdServerError(EtcdError):
    """An etcd member did not start, or the cluster found no leader in time."""

    reason = "etcd_server_error"


# --- one member's command line --------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSpec:
    name: str
    data_dir: Path
    client_url: str
    peer_url: str


MAX_TXN_OPS = 10_000  # a 5,000-workload mesh with its services and policies is ~5,600 objects
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # above the loader's 4 MiB file cap, JSON a little larger


def cluster_argv(
    spec: MemberSpec, initial_cluster: str, tls: EtcdTls | None, *, state: str = "new"
) -> list[str]:
    """etcd 3.4 argv for one member. `initial_cluster` is "name=peer_url,...". Clients are not
    asked for certificates: etcd 3.4 turns --trusted-ca-file into "require a client cert", and the
    JSON gateway cannot authenticate by certificate anyway (docs/fleet.md); clients authenticate
    with user/password. Peers do use mutual TLS."""
    argv = [
        ETCD_BIN,
        f"--name={spec.name}",
        f"--data-dir={spec.data_dir}",
        f"--listen-client-urls={spec.client_url}",
        f"--advertise-client-urls={spec.client_url}",
        f"--listen-peer-urls={spec.peer_url}",
        f"--initial-advertise-peer-urls={spec.peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}",
        "--initial-cluster-token=zt-etcd",
        "--heartbeat-interval=50",
        "--election-timeout=500",
        "--logger=zap",
        "--log-level=warn",
        "--enable-v2=false",
        # a push is one transaction of every changed object (zt/fleet/push.py): etcd's defaults
        # (128 operations, 1.5 MiB) would refuse a first push of more than 127 objects
        f"--max-txn-ops={MAX_TXN_OPS}",
        f"--max-request-bytes={MAX_REQUEST_BYTES}",
        # a progress message per watch every second: a quiet stream means a dead member
        # (zt/fleet/etcdwatch.py), without one status request per node per second
        "--experimental-watch-progress-notify-interval=1s",
    ]
    if tls is not None:
        argv += [
            f"--cert-file={tls.server_cert}",
            f"--key-file={tls.server_key}",
            f"--peer-cert-file={tls.peer_cert}",
            f"--peer-key-file={tls.peer_key}",
            f"--peer-trusted-ca-file={tls.ca}",
            "--peer-client-cert-auth",
        ]
    return argv


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that bind now, below the ephemeral range: a port picked from that
    range can be taken by any outgoing connection (etcd's own peer dials) before etcd binds it."""
    low = max(1024, _ephemeral_low() - 12000)
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(low, low + 12000)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


# --- a cluster of members this process owns ----------------------------------------------------------


@dataclass
class Member:
    spec: MemberSpec
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def client_url(self) -> str:
        return self.spec.client_url

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    def __init__(
        self,
        base_dir: Path,
        members: list[Member],
        tls: EtcdTls | None,
        netns: str | None,
        *,
        owns_base: bool = True,
    ) -> None:
        self.base_dir = base_dir
        self.owns_base = owns_base
        self.members = members
        self.tls = tls
        self.netns = netns
        self.root_password: str | None = None  # set once bootstrap_auth ran (tests, lab)
        self.initial_cluster = ",".join(f"{m.name}={m.spec.peer_url}" for m in members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        size: int = 1,
        *,
        tls: bool,
        netns: str | None = None,
        host: str = "127.0.0.1",
        ports: Sequence[tuple[int, int]] | None = None,
    ) -> EtcdCluster:
        """Start `size` members and wait until each answers with a leader. `ports` are
        (client, peer) per member; default: free loopback ports (a start that loses a port race
        is retried with others), or 2379+10i/2380+10i in a netns."""
        for attempt in range(3):
            picked = ports
            if picked is None and netns:
                picked = [(2379 + 10 * i, 2380 + 10 * i) for i in range(size)]
            elif picked is None:
                flat = free_ports(2 * size, host)
                picked = list(zip(flat[::2], flat[1::2], strict=True))
            try:
                return cls._start(base_dir, size, picked, tls=tls, netns=netns, host=host)
            except EtcdServerError as exc:
                if ports is not None or "address already in use" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start(
        cls,
        base_dir: Path | None,
        size: int,
        ports: Sequence[tuple[int, int]],
        *,
        tls: bool,
        netns: str | None,
        host: str,
    ) -> EtcdCluster:
        try:
            base = base_dir or Path(tempfile.mkdtemp(prefix="zt-etcd-", dir="/dev/shm"))
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            where = base_dir or "/dev/shm"
            raise EtcdServerError(f"etcd data dir {where}: {exc.strerror or exc}") from None
        scheme = "https" if tls else "http"
        where = f"[{host}]" if ":" in host else host
        material = EtcdTls.create(base / "tls", [host, "localhost"]) if tls else None
        members = [
            Member(
                MemberSpec(
                    name=f"etcd{i}",
                    data_dir=base / f"etcd{i}.data",
                    client_url=f"{scheme}://{where}:{cport}",
                    peer_url=f"{scheme}://{where}:{pport}",
                )
            )
            for i, (cport, pport) in enumerate(ports[:size])
        ]
        cluster = cls(base, members, material, netns, owns_base=base_dir is None)
        try:
            for m in members:
                cluster._spawn(m, "new")
            cluster.wait_ready()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _spawn(self, member: Member, state: str) -> None:
        argv = cluster_argv(member.spec, self.initial_cluster, self.tls, state=state)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]  # ip execs etcd: same pid
        member.log = self.base_dir / f"{member.name}.log"
        try:
            with member.log.open("ab") as log:
                member.process = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        except OSError as exc:
            raise EtcdServerError(
                f"etcd member {member.name}: cannot run {argv[0]} (log {member.log}): "
                f"{exc.strerror or exc}; expected {ETCD_BIN} (Debian package etcd-server)"
            ) from None

    def _ctl(self, *args: str, endpoints: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = [ETCDCTL_BIN, f"--endpoints={','.join(endpoints)}", "--dial-timeout=1s"]
        argv += ["--command-timeout=2s"]
        if self.tls:
            argv.append(f"--cacert={self.tls.ca}")
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        env = {**os.environ, "ETCDCTL_API": "3"}
        try:
            return subprocess.run(
                [*argv, *args], capture_output=True, text=True, env=env, check=False
            )
        except OSError as exc:
            raise EtcdServerError(
                f"cannot run {argv[0]}: {exc.strerror or exc}; expected {ETCDCTL_BIN} "
                "(Debian package etcd-client)"
            ) from None

    def member_status(self, member: Member) -> dict[str, object] | None:
        """The member's maintenance status (etcdctl endpoint status), None if it did not answer."""
        out = self._ctl("endpoint", "status", "-w", "json", endpoints=[member.client_url])
        if out.returncode != 0:
            return None
        with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
            status = json.loads(out.stdout)[0]["Status"]
            return status if isinstance(status, dict) else None
        return None

    def wait_ready(self, members: Sequence[Member] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        for m in members or [m for m in self.members if m.running]:
            while True:
                if m.process is not None and m.process.poll() is not None:
                    raise EtcdServerError(f"etcd member {m.name} exited: {self._log_tail(m)}")
                status = self.member_status(m)
                if status and status.get("leader"):
                    break
                if time.monotonic() > deadline:
                    raise EtcdServerError(
                        f"etcd member {m.name} has no leader after {START_TIMEOUT_S} s"
                    )
                time.sleep(0.05)

    def _log_tail(self, member: Member) -> str:
        try:
            return member.log.read_text(errors="replace")[-600:].strip()
        except OSError:
            return "(no log)"

    def leader(self) -> Member:
        for m in self.members:
            if not m.running:
                continue
            status = self.member_status(m)
            header = status.get("header") if status else None
            if (
                status
                and isinstance(header, dict)
                and header.get("member_id") == status.get("leader")
            ):
                return m
        raise EtcdServerError("no etcd member reports itself as leader")

    def member(self, endpoint: str) -> Member:
        for m in self.members:
            if m.client_url == endpoint.rstrip("/"):
                return m
        raise EtcdServerError(f"endpoint {endpoint!r} is not a member of this cluster")

    def _signal(self, member: Member, sig: signal.Signals) -> None:
        if member.running and member.process is not None:
            member.process.send_signal(sig)

    def kill(self, member: Member) -> None:
        """SIGKILL (no clean shutdown), and reap it."""
        self._signal(member, signal.SIGKILL)
        if member.process is not None:
            member.process.wait()

    def stop(self, member: Member) -> None:
        """Clean shutdown (SIGTERM), SIGKILL after 5 s."""
        self._signal(member, signal.SIGCONT)
        self._signal(member, signal.SIGTERM)
        if member.process is not None:
            try:
                member.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill(member)

    def freeze(self, member: Member) -> None:
        """SIGSTOP: the member keeps its sockets but answers nothing."""
        self._signal(member, signal.SIGSTOP)

    def thaw(self, member: Member) -> None:
        self._signal(member, signal.SIGCONT)

    def restart(self, member: Member, *, wait: bool = True) -> None:
        """Start a stopped/killed member again on its data dir."""
        if member.running:
            self.stop(member)
        self._spawn(member, "existing")
        if wait:
            self.wait_ready([member])

    def heal(self) -> None:
        """Thaw frozen members and restart stopped ones (between tests that break the cluster)."""
        for m in self.members:
            self.thaw(m)
        down = [m for m in self.members if not m.running]
        for m in down:
            self._spawn(m, "existing")
        if down:
            self.wait_ready()

    def stop_all(self) -> None:
        for m in self.members:
            self.stop(m)

    def close(self) -> None:
        """Kill every member this object started; remove the data dirs (and the base dir when
        this object made it)."""
        for m in self.members:
            self._signal(m, signal.SIGCONT)
            self.kill(m)
            shutil.rmtree(m.spec.data_dir, ignore_errors=True)
        if self.owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def client(
        self, *, user: str | None = None, password: str | None = None, timeout: float = 2.0
    ) -> EtcdClient:
        """A client for every member; root (when auth was bootstrapped) unless `user` is given."""
        if user is None and self.root_password is not None:
            user, password = "root", self.root_password
        return EtcdClient(
            self.endpoints,
            cacert=self.tls.ca if self.tls else None,
            user=user,
            password=password,
            timeout=timeout,
        )


async def bootstrap_auth(client: EtcdClient, root_password: str) -> None:
    """Create user root (password root_password) with role root, then enable auth. Idempotent when
    `client` authenticates as root with that password (it may do so before auth is on)."""
    await client.user_add("root", root_password)
    await client.role_add("root")
    await client.user_grant_role("root", "root")
    await client.auth_enable()
