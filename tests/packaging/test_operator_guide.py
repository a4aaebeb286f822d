"""docs/operator-guide.md, run: every `sh` block on network namespaces that stand in for its hosts,
with the `zt` installed from the wheel (the `installed_zt` fixture of tests/packaging/conftest.py).

Fence convention (the guide's introduction states it for readers):

    ```sh host=admin            run on the admin host (etcd, the signer)
    ```sh host=nodes            run on node1, node2 and node3 at once, each with its own $NODE ...
    ```sh host=node2            run on one node
    ```sh host=nodes daemon     a long-running service: started in the background, stopped at the end
    ```text                     after a block: lines its output must contain, in order (... = any)
    ```sh-norun                 shown, not run; NORUN says which kinds of command may be, and why

The hosts are the lab topology's namespaces (zt/lab/topology.py: a fabric, three nodes with one pod
each, and the control host as `admin`), built here without the lab's daemons. Each host also gets
its own mount namespace, so the guide's real paths work unchanged: private tmpfs at /var/lib/zt,
/run/zt and /var/lib/etcd (a host's secrets and state), a private bpffs at /sys/fs/bpf (each node
pins its capture at the default /sys/fs/bpf/zt), and one shared directory at /etc/zt (what the
guide copies from the admin host to the nodes). Tearing a mount namespace down also releases any
pinned BPF link left behind by a failed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.packaging.conftest import install_env
from zt.lab import topology
from zt.lab.topology import LabPlan

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
NODES = ("node1", "node2", "node3")
BLOCK_TIMEOUT = 90.0
# Mount points each host gets privately (tmpfs), and the one it shares with the others.
PRIVATE = ("/var/lib/zt", "/run/zt", "/var/lib/etcd")
SHARED = "/etc/zt"

# What a `sh-norun` block may contain (each command line starts with one of these), and why the test
# does not run it: anything else in such a block fails `test_norun_blocks_are_only_the_known_kinds`.
_INSTALL = "what the installed_zt fixture does (tests/packaging/conftest.py): wheel, venv, bcc link"
NORUN = {
    "apt-get install": "Debian packages: the test machine has them (scripts/setup-host.sh)",
    "systemctl": "no systemd as PID 1 here; the test runs the command line the unit runs",
    "make dist": _INSTALL,
    "python3 -m venv": _INSTALL,
    "/opt/zt/venv/bin/pip install": _INSTALL,
    "ln -s /usr/lib/python3/dist-packages/bcc": _INSTALL,
    "export": "the §0 variables: the test sets them for each namespace (host_env)",
    "for n in node1 node2 node3; do scp": "copies between hosts: the test's hosts share /etc/zt",
    'zt run --node "$NODE" --config': "file mode's node: the walkthrough runs fleet mode; file "
    "mode runs from the install in tests/packaging/test_wheel.py and in tests/node/",
}

_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.M | re.S)
_VAR = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)\}?")


@dataclass(frozen=True)
class Block:
    line: int
    run: bool
    host: str  # admin | nodes | node1..3; "" for sh-norun
    daemon: bool
    code: str
    expect: tuple[str, ...] = ()


def parse(text: str) -> list[Block]:
    """The guide's shell blocks, each with the `text` block that follows it (if any)."""
    blocks: list[Block] = []
    prev_end = -1  # where the last sh block's fence closed
    for m in _FENCE.finditer(text):
        info, body = m.group(1).split(), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if info[:1] == ["text"] and blocks and not text[prev_end : m.start()].strip():
            last = blocks.pop()
            expect = tuple(x for x in body.splitlines() if x.strip())
            blocks.append(dataclasses.replace(last, expect=expect))
        elif info[:1] == ["sh"]:
            attrs = dict(a.partition("=")[::2] for a in info[1:])
            host, daemon = attrs.get("host", ""), "daemon" in attrs
            blocks.append(Block(line, True, host, daemon, body))
        elif info[:1] == ["sh-norun"]:
            blocks.append(Block(line, False, "", False, body))
        prev_end = m.end() if info[:1] in (["sh"], ["sh-norun"]) else -1
    return blocks


def command_lines(code: str) -> list[str]:
    """Each command line (continuations and indented lines skipped)."""
    lines, cont = [], False
    for raw in code.splitlines():
        line = raw.strip()
        if line and not cont and not raw.startswith(" ") and not line.startswith("#"):
            lines.append(line)
        cont = line.endswith("\\")
    return lines


def matches(expect: tuple[str, ...], output: str) -> bool:
    """Every expected line matches an output line, in order; `...` matches anything."""
    lines = iter(output.splitlines())
    for want in expect:
        pattern = want.strip().replace("...", "*")
        if not any(fnmatch.fnmatchcase(got.strip(), pattern) for got in lines):
            return False
    return True


# -- pure checks of the guide (no root) -------------------------------------------------------------
def test_every_block_has_a_known_host() -> None:
    blocks = parse(GUIDE.read_text())
    assert sum(b.run for b in blocks) >= 20
    bad = [b.line for b in blocks if b.run and b.host not in ("admin", "nodes", *NODES)]
    assert not bad, f"sh blocks without host=admin|nodes|node1..3 at lines {bad}"


def test_norun_blocks_are_only_the_known_kinds() -> None:
    for b in (b for b in parse(GUIDE.read_text()) if not b.run):
        unknown = [c for c in command_lines(b.code) if not c.startswith(tuple(NORUN))]
        assert not unknown, f"line {b.line}: sh-norun runs {unknown}: run it, or say why not"


def test_every_variable_the_blocks_use_is_in_the_table() -> None:
    text = GUIDE.read_text()
    table = text.split("## 1.")[0]
    used = {v for b in parse(text) if b.run for v in _VAR.findall(b.code)}
    local = {"EOF", "PATH"}  # heredoc marker; set by the install step
    missing = sorted(v for v in used - local if f"`{v}`" not in table)
    assert not missing, f"variables used but not listed in §0: {missing}"


def test_expected_output_matching() -> None:
    assert matches(("a ...", "2"), "x\na b c\n 2\n")
    assert not matches(("2", "a ..."), "a b\n2\n")


# -- the walkthrough (root) -------------------------------------------------------------------------
@dataclass
class Host:
    name: str
    netns: str
    mnt: Path  # a bind mount of the host's mount namespace
    env: dict[str, str]


@dataclass
class Walk:
    hosts: dict[str, Host]
    logs: Path
    daemons: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    timings: list[tuple[float, str]] = field(default_factory=list)  # (seconds, block)

    def argv(self, host: Host, code: str) -> list[str]:
        return ["nsenter", f"--mount={host.mnt}", f"--net=/run/netns/{host.netns}",
                "bash", "-euo", "pipefail", "-c", code]  # fmt: skip

    def start(self, host: Host, block: Block) -> None:
        log = self.logs / f"{host.name}-{block.line}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.argv(host, block.code), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=host.env, cwd=self.logs, start_new_session=True,
            )  # fmt: skip
        self.daemons.append((host.name, proc, log))

    def run(self, host: Host, block: Block) -> str:
        """The block's output; fails with it (and any dead daemon's log) unless it exits 0 and
        prints what the guide says it prints."""
        started = time.monotonic()
        proc = subprocess.Popen(
            self.argv(host, block.code), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=host.env, cwd=self.logs, start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        text = out.decode(errors="replace")
        (self.logs / f"{host.name}-{block.line}.out").write_text(text)  # ZT_GUIDE_KEEP_LOGS=1 keeps
        self.timings.append((time.monotonic() - started, f"line {block.line} on {host.name}"))
        where = f"operator-guide.md line {block.line} on {host.name}"
        assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{text}{self.dead()}"
        assert matches(block.expect, text), f"{where}: expected {block.expect}, got:\n{text}"
        return text

    def dead(self) -> str:
        return "".join(
            f"\n-- {name}'s daemon exited {p.returncode}: {log.read_text()[-2000:]}"
            for name, p, log in self.daemons
            if p.poll() not in (None, 0)
        )

    def stop(self) -> None:
        for _, proc, _ in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc, _ in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def host_env(lab: LabPlan, zt: Path) -> dict[str, dict[str, str]]:
    """The §0 variables for each host, from the lab plan."""
    pods = {p.node: p for p in lab.pods}
    admin = str(lab.control_ipv4)
    # an operator's shell: without this suite's PYTHONDONTWRITEBYTECODE, the installed zt keeps
    # its bytecode after the first command instead of compiling its imports on every command
    shell = install_env()
    common = {
        **shell,
        "PATH": f"{zt.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ZT_VENV": str(zt.parent.parent),
        "ADMIN_IP": admin,
        "ETCD": f"https://{admin}:2379",
        "MONITORING": admin,
    }
    for n in lab.nodes:
        i = n.index
        common |= {f"NODE{i}_IP": str(n.link_ipv4), f"POD_CIDR{i}": str(n.pod_net4),
                   f"POD{i}_IP": str(pods[n.name].ipv4), f"POD{i}_NETNS": pods[n.name].netns}  # fmt: skip
    envs = {"admin": dict(common)}
    for n in lab.nodes:
        pod = pods[n.name]
        envs[n.name] = common | {"NODE": n.name, "NODE_IP": str(n.link_ipv4),
                                 "POD_NETNS": pod.netns, "POD_IP": str(pod.ipv4)}  # fmt: skip
    return envs


def _mount_namespace(mnt: Path, shared: Path, bpffs: bool) -> None:
    mounts = [f"mount -t tmpfs -o mode=0755 tmpfs {d}" for d in PRIVATE]
    mounts.append(f"mount --bind {shared} {SHARED}")
    if bpffs:
        mounts.append("mount -t bpf bpf /sys/fs/bpf")
    mnt.touch()
    subprocess.run(
        ["unshare", f"--mount={mnt}", "--propagation", "private", "sh", "-ec", "; ".join(mounts)],
        check=True, timeout=10,
    )  # fmt: skip


def _drop_pod_routes(lab: LabPlan) -> None:
    """The topology routes pod CIDRs between nodes; the guide's §2 adds those routes itself."""
    for node in lab.nodes:
        for other in lab.nodes:
            if other is not node:
                subprocess.run(
                    ["ip", "-n", node.netns, "route", "del", str(other.pod_net4)],
                    check=True, timeout=10,
                )  # fmt: skip


@contextlib.contextmanager
def guide_hosts(zt: Path) -> Iterator[Walk]:
    lab = topology.plan(f"og{os.getpid() % 1000}", nodes=3, pods=1, control=True)
    made = [d for d in (*PRIVATE, SHARED) if not Path(d).exists()]
    base = Path(tempfile.mkdtemp(prefix="zt-guide-"))
    nsdir = base / "mnt"
    walk = Walk({}, base / "logs")
    try:
        for d in made:
            Path(d).mkdir(parents=True)
        (base / "logs").mkdir()
        (base / "etc").mkdir()
        nsdir.mkdir()
        subprocess.run(["mount", "--bind", str(nsdir), str(nsdir)], check=True)
        subprocess.run(["mount", "--make-private", str(nsdir)], check=True)
        topology.build(lab)
        _drop_pod_routes(lab)
        envs = host_env(lab, zt)
        assert lab.control_netns is not None
        places = {"admin": lab.control_netns, **{n.name: n.netns for n in lab.nodes}}
        for name, netns in places.items():
            mnt = nsdir / name
            _mount_namespace(mnt, base / "etc", bpffs=name != "admin")
            walk.hosts[name] = Host(name, netns, mnt, envs[name])
        yield walk
    finally:
        print("slowest blocks:", *(f"{s:.1f}s {b}" for s, b in sorted(walk.timings)[-8:]), sep="\n")
        walk.stop()
        for mnt in nsdir.iterdir() if nsdir.is_dir() else ():  # also one whose mounts failed
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        subprocess.run(["umount", str(nsdir)], check=False, capture_output=True)
        topology.destroy(lab.prefix)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                Path(d).rmdir()
        if not os.environ.get("ZT_GUIDE_KEEP_LOGS"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def guide_zt(request: pytest.FixtureRequest) -> Path:
    """The wheel-installed zt (ZT_GUIDE_ZT names another, e.g. a checkout's .venv/bin/zt)."""
    override = os.environ.get("ZT_GUIDE_ZT")
    if override:
        return Path(override)
    installed: Path = request.getfixturevalue("installed_zt")
    return installed


@pytest.mark.root
def test_operator_guide_walkthrough(guide_zt: Path) -> None:
    """Every runnable block exits 0 and prints what the guide says: three nodes joined through
    etcd, pods reaching each other through HBONE, a node upgraded (its pods fail closed while it
    is down) and a node removed (capture detached)."""
    blocks = [b for b in parse(GUIDE.read_text()) if b.run]
    with guide_hosts(guide_zt) as walk, ThreadPoolExecutor(len(NODES)) as pool:
        for block in blocks:
            names = NODES if block.host == "nodes" else (block.host,)
            hosts = [walk.hosts[n] for n in names]
            if block.daemon:
                for host in hosts:
                    walk.start(host, block)
                continue
            for job in [pool.submit(walk.run, host, block) for host in hosts]:
                job.result()
        node3 = walk.hosts["node3"]
        pins = subprocess.run(
            ["nsenter", f"--mount={node3.mnt}", "ls", "/sys/fs/bpf"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert "zt" not in pins.stdout.split(), "§7 left node3's capture pinned"
