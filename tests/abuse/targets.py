"""The servers the abuse tests attack, and the measurement around one attack.

Two targets: `zt hbone serve` (a real subprocess on loopback, in front of an echo process and a
port that never accepts) and a lab node's :15008 (`zt run` with real capture, tests/node/lab.py).
The attacker and the legitimate client come from different source addresses, as they would in a
real mesh (per-source caps must not make the legitimate client pay for the attacker)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.abuse.attacks import MAX_SECONDS, Peer, Probe, probe
from tests.node.lab import Lab, identity, metric
from tests.proxy.helpers import Pki
from zt.capture.netns import open_listener
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId
from zt.lab import mesh, runner
from zt.timescale import scaled

REPO = Path(__file__).resolve().parents[2]
ZT = Path(sys.executable).with_name("zt")
BLACKHOLE_PORT = 7777  # a lab pod port with a listener that never accepts
RESTART_FD_SLACK = 16  # a server holding this many more fds than when it started is restarted
FD_SETTLE_S = 5.0  # how long the attacker's fds may take to leave the server's table
LISTENING = re.compile(r"listening on (\S+)")


def vm_kib(pid: int, key: str = "VmRSS") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(key + ":")))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_cert(cert: WorkloadCert, prefix: Path) -> tuple[str, str, str]:
    pem, key, bundle = cert.write(prefix)
    return str(pem), str(key), str(bundle)


def blackhole(netns: str | None, port: int = 0) -> socket.socket:
    """A listener that never accepts: with a backlog of 0 its queue is full after one connection
    and the kernel drops every later SYN, so a dial to it hangs until the dialer gives up."""
    if netns is not None:
        return open_listener(netns, port, backlog=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(0)
    return sock


class Target:
    """One server under attack: its pid, how to reach it as attacker and as a legitimate client."""

    name: str
    attacker: Peer
    prober: Peer
    attacker_id: str  # the SPIFFE id of the attacker's certificate
    fresh: tuple[int, int] = (0, 0)  # (RSS KiB, fds) right after the server started

    @property
    def log(self) -> Path:
        """The server's log (stderr)."""
        raise NotImplementedError

    def ca(self) -> CertificateAuthority:
        raise NotImplementedError

    def fresh_attacker(self, label: str, directory: Path) -> None:
        """A certificate of its own for the next attack (same CA, SPIFFE id `.../sa/<label>`), so
        the server's log lines about it are told apart from the previous attack's (they are
        rate-limited per peer identity)."""
        base = SpiffeId.parse(self.attacker_id)
        who = SpiffeId(base.trust_domain, base.namespace, label)
        files = write_cert(self.ca().issue(who, now=time.time()), directory / label)
        self.attacker = replace(self.attacker, cert=files[0], key=files[1], ca=files[2])
        self.attacker_id = str(who)

    def limit_metric(self) -> float | None:
        """zt_hbone_limit_exceeded_total summed over limits, where the server exposes metrics."""
        return None

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def ensure(self, rss_slack_kib: int, fd_slack: int) -> None:
        """Each test starts from a live server that earlier attacks left as they found it. A
        server that kept their memory is restarted: glibc keeps freed heap (and raises its mmap
        threshold after large frees), so the next attack would reuse it and look free."""
        if self.alive():
            rss, fds = vm_kib(self.pid), fd_count(self.pid)
            if rss <= self.fresh[0] + rss_slack_kib and fds <= self.fresh[1] + fd_slack:
                return
        self.restart()
        self.fresh = (vm_kib(self.pid), fd_count(self.pid))


@dataclass
class ServeTarget(Target):
    """`zt hbone serve --listen 127.0.0.1:0` with a client certificate of its CA."""

    directory: Path
    pki: Pki
    echo_port: int
    hole: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    name: str = "serve"

    def start(self) -> None:
        cert, key, ca = write_cert(self.pki.server, self.directory / "server")
        log = self.directory / "serve.log"
        argv = [str(ZT), "hbone", "serve", "--listen", "127.0.0.1:0"]
        argv += ["--cert", cert, "--key", key, "--bundle", ca, *allow_loopback()]
        with open(log, "ab") as out:
            offset = out.tell()
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        address = _wait_line(log, offset, LISTENING, self.proc, scaled(15))
        host, port = address.rsplit(":", 1)
        client = write_cert(self.pki.client, self.directory / "client")
        common: dict[str, Any] = {
            "server": (host, int(port)),
            "cert": client[0], "key": client[1], "ca": client[2],
            "echo": ("127.0.0.1", self.echo_port),
            "blackhole": ("127.0.0.1", self.hole.getsockname()[1]),
        }  # fmt: skip
        self.attacker = Peer(**common, source="127.0.0.2")
        self.prober = Peer(**common, source="127.0.0.1")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def log(self) -> Path:
        return self.directory / "serve.log"

    def ca(self) -> CertificateAuthority:
        return self.pki.ca

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def allow_loopback() -> list[str]:
    """`--allow 127.0.0.0/8` where `zt hbone serve` has a dial allow-list (loopback denied by
    default); nothing on a tree that predates the flag."""
    text = subprocess.run(
        [str(ZT), "hbone", "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return ["--allow", "127.0.0.0/8"] if "--allow" in text else []


def _wait_line(
    log: Path, offset: int, pattern: re.Pattern[str], proc: subprocess.Popen[bytes], timeout: float
) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(log, "rb") as f:
            f.seek(offset)
            m = pattern.search(f.read().decode(errors="replace"))
        if m:
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{proc.args!r}: no {pattern.pattern!r} in {log}:\n{runner.tail(log)}")


@contextlib.contextmanager
def serve_target(directory: Path) -> Iterator[ServeTarget]:
    """The echo process, the never-accepting port and `zt hbone serve`; all ended on exit."""
    echo = subprocess.Popen(
        [sys.executable, "-m", "tests.abuse.attacks", "echo"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=_env(), bufsize=0,
    )  # fmt: skip
    hole = blackhole(None)
    target: ServeTarget | None = None
    try:
        assert echo.stdout is not None
        port = int(_readline(echo, scaled(15)))
        target = ServeTarget(directory, Pki.create(directory / "ca"), port, hole)
        target.attacker_id = str(target.pki.client.identity)
        target.start()
        target.fresh = (vm_kib(target.pid), fd_count(target.pid))
        yield target
    finally:
        if target is not None:
            target.stop()
        hole.close()
        _end(echo)


@dataclass
class NodeTarget(Target):
    """node2's :15008 in the lab, attacked from pod1-1 (another node); the legitimate client is
    pod2-2 (another source address). The never-accepting port is opened inside pod2-1."""

    lab: Lab
    node: str = "node2"
    name: str = "node"

    @property
    def pid(self) -> int:
        return self.lab.pid(self.node)

    def alive(self) -> bool:
        return runner.alive(self.pid)

    def restart(self) -> None:
        self.lab.restart(self.node)

    @property
    def log(self) -> Path:
        return self.lab.log(self.node)

    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.lab.state.ca_dir)

    def limit_metric(self) -> float:
        return metric(self.lab.metrics(self.node), "zt_hbone_limit_exceeded_total")


@contextlib.contextmanager
def node_target(lab: Lab, directory: Path) -> Iterator[NodeTarget]:
    src, dst, legit = lab.pod("pod1-1"), lab.pod("pod2-1"), lab.pod("pod2-2")
    ca = CertificateAuthority.load(lab.state.ca_dir)
    hole = blackhole(dst.netns, BLACKHOLE_PORT)
    try:
        target = NodeTarget(lab)

        def peer(pod_name: str, netns: str) -> Peer:
            cert = ca.issue(SpiffeId.parse(identity(lab.pod(pod_name))), now=time.time())
            files = write_cert(cert, directory / pod_name)
            return Peer(
                server=(str(dst.ipv4), 15008),
                cert=files[0], key=files[1], ca=files[2],
                echo=(str(dst.ipv4), mesh.APP_PORT),
                blackhole=(str(dst.ipv4), BLACKHOLE_PORT),
                netns=netns, mark=True,
            )  # fmt: skip

        target.attacker = peer(src.name, src.netns)
        target.attacker_id = identity(src)
        target.prober = peer(legit.name, legit.netns)
        target.fresh = (vm_kib(target.pid), fd_count(target.pid))
        yield target
    finally:
        hole.close()


# -- one attack, measured ---------------------------------------------------------------------------
@dataclass
class Outcome:
    target: str
    attack: str
    base_rss_kib: int
    peak_rss_kib: int
    base_fds: int
    peak_fds: int
    fds_after: int  # fds when the poll for the baseline ended
    fds_settle_s: float
    before: Probe
    during: Probe
    after: Probe
    alive: bool
    tally: dict[str, Any] = field(default_factory=dict)
    limit_log_lines: int = 0  # server log lines naming the attacker's identity and a limit
    limit_metric_delta: float | None = None  # zt_hbone_limit_exceeded_total growth, if exposed
    attacker_rc: int | None = None
    attacker_err: str = ""

    @property
    def rss_growth_mib(self) -> float:
        return (self.peak_rss_kib - self.base_rss_kib) / 1024

    def record(self) -> None:
        """Append to $ZT_ABUSE_RESULTS (JSON lines) when set: the figures docs/security.md quotes."""
        path = os.environ.get("ZT_ABUSE_RESULTS")
        if path:
            row = asdict(self) | {"rss_growth_mib": round(self.rss_growth_mib, 1)}
            with open(path, "a") as f:
                f.write(json.dumps(row, default=repr) + "\n")


_ATTACKS = itertools.count(1)


class Sampler:
    """Peak RSS and fd count of a pid, every 50 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = vm_kib(pid)
        self.fds = fd_count(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, StopIteration):
                self.rss = max(self.rss, vm_kib(self.pid))
                self.fds = max(self.fds, fd_count(self.pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def attack(
    target: Target, name: str, rss_bound_kib: int, fd_slack: int, directory: Path, **args: Any
) -> Outcome:
    """Run one attack from its own process, with a certificate of its own, while a legitimate
    tunnel is opened; then wait for the attacker's connections to leave the server's fd table."""
    target.ensure(rss_bound_kib // 2, RESTART_FD_SLACK)
    target.fresh_attacker(f"attacker-{name.replace('_', '-')}-{next(_ATTACKS)}", directory)
    before = probe(target.prober)
    pid = target.pid
    log_offset = target.log.stat().st_size
    limits_before = target.limit_metric()
    base_rss, base_fds = vm_kib(pid), fd_count(pid)
    sampler = Sampler(pid)
    spec = json.dumps({"peer": target.attacker.to_json(), "args": args})
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.abuse.attacks", "attack", name, spec],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=_env(), bufsize=0,
    )  # fmt: skip
    try:
        started = _readline(proc, scaled(15)) == "attacking"
        time.sleep(0.3)  # well inside the attack: every attack runs for seconds
        during = probe(target.prober) if started else Probe(0, b"", 0.0, "attack never started")
        out, err = proc.communicate(timeout=MAX_SECONDS + scaled(20))
    finally:
        _end(proc)
        sampler.stop()
    lines = out.decode(errors="replace").strip().splitlines()
    tally = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    alive = target.alive()
    after = probe(target.prober) if alive else Probe(0, b"", 0.0, "server dead")
    settle_start = time.monotonic()
    fds_after = fd_count(pid) if alive else -1
    # FD_SETTLE_S is shorter than the 10 s upstream dial timeout on purpose: a dial left running
    # after its stream was reset must show here, not time out unseen.
    while (
        alive and fds_after > base_fds + fd_slack and time.monotonic() - settle_start < FD_SETTLE_S
    ):
        time.sleep(0.1)
        fds_after = fd_count(pid) if target.alive() else -1
    limits_after = target.limit_metric() if alive else None
    outcome = Outcome(
        target.name, name, base_rss, sampler.rss, base_fds, sampler.fds, fds_after,
        round(time.monotonic() - settle_start, 2), before, during, after, alive, tally,
        _limit_lines(target.log, log_offset, target.attacker_id),
        None if limits_after is None or limits_before is None else limits_after - limits_before,
        proc.returncode, err.decode(errors="replace")[-2000:],
    )  # fmt: skip
    outcome.record()
    return outcome


def _limit_lines(log: Path, offset: int, who: str) -> int:
    """Lines logged since `offset` that name the peer `who` and a limit it went past."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return sum(1 for line in text.splitlines() if who in line and "limit" in line)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().decode().strip() if ready else ""


def _end(proc: subprocess.Popen[bytes]) -> None:
    """End a process this module started, by its Popen handle."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(scaled(10))
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


Check = Callable[[Outcome], None]
