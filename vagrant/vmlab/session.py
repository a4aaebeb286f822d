"""One kernel's lab: boot two nodes, set them up, run the tiers, power off. Composes the adapters.

State lives in vagrant/.cache/run/<kernel>/ (key, overlays, serial logs, pidfiles, state.json) so
`vm.py down` in another process can still stop the VMs by PID.
"""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vmlab import qemu
from vmlab.errors import GuestCommandError, ImageMissingError
from vmlab.plan import Image, Lab, Node, plan_lab, qemu_argv, routes_to_peers
from vmlab.results import KernelResult, Summary, parse_junit
from vmlab.ssh import Ssh, make_key

GUEST_TREE = "/root/zt"
GUEST_PY = "/opt/zt/venv/bin/python"


@dataclass(frozen=True)
class Paths:
    cache: Path
    kernel: str

    @property
    def image_dir(self) -> Path:
        return self.cache / "images" / self.kernel

    @property
    def run(self) -> Path:
        return self.cache / "run" / self.kernel

    @property
    def logs(self) -> Path:
        return self.cache / "logs" / self.kernel

    @property
    def key(self) -> Path:
        return self.run / "id_ed25519"

    def image(self) -> Image:
        d = self.image_dir
        return Image(disk=d / "disk.qcow2", kernel=d / "vmlinuz", initrd=d / "initrd.img")

    def kver(self) -> str:
        stamp = self.image_dir / "kver"
        if not stamp.is_file():
            raise ImageMissingError(
                f"image for KERNEL={self.kernel}: {self.image_dir} not built; run vagrant/build-image.sh {self.kernel}"
            )
        return stamp.read_text().strip()


def boot(
    paths: Paths, accel: str, *, memory_mib: int, cpus: int, pods: int, ssh_timeout_s: float
) -> tuple[Lab, tuple[float, ...]]:
    """Starts both nodes and waits for their sshd; returns the lab and each node's boot-to-ssh time."""
    paths.kver()
    image = paths.image()
    paths.run.mkdir(parents=True, exist_ok=True)
    ssh1, ssh2, link = qemu.free_ports(3)
    lab = plan_lab(
        paths.kernel, (ssh1, ssh2), link, memory_mib=memory_mib, cpus=cpus, pods=pods, accel=accel
    )
    (paths.run / "lab.json").write_text(json.dumps(asdict(lab), indent=2))
    pubkey = make_key(paths.key)
    started: dict[str, tuple[int, float]] = {}
    for node in lab.nodes:
        overlay = paths.run / f"{node.name}.qcow2"
        qemu.make_overlay(image.disk, overlay)
        serial = paths.run / f"{node.name}.serial"
        argv = qemu_argv(lab, node, image, overlay=overlay, serial_log=serial, ssh_pubkey=pubkey)
        pid = qemu.start(argv, paths.run / f"{node.name}.pid", paths.run / f"{node.name}.qemu.log")
        started[node.name] = (pid, time.monotonic())
        print(
            f"vm[{paths.kernel}]: {node.name} qemu pid {pid}, ssh 127.0.0.1:{node.ssh_port}, link {node.link_ip}"
        )
        if node.index == 1:  # the connect side needs the listen side's socket
            qemu.wait_listening(pid, lab.link_port, 30)
    waits = []
    for node in lab.nodes:
        pid, t0 = started[node.name]
        ssh = Ssh(node.ssh_port, paths.key, node.name)
        ssh.wait_ready(functools.partial(qemu.alive, pid), ssh_timeout_s)
        waits.append(round(time.monotonic() - t0, 1))
        print(f"vm[{paths.kernel}]: {node.name} ssh ready {waits[-1]:.0f} s after qemu start")
    return lab, tuple(waits)


def node_ssh(paths: Paths, lab: Lab, node: Node) -> Ssh:
    return Ssh(node.ssh_port, paths.key, node.name)


def provision(paths: Paths, lab: Lab, project: Path) -> None:
    """Project synced with rsync, zt installed offline into the image's venv, pods as netns."""
    for node in lab.nodes:
        ssh = node_ssh(paths, lab, node)
        ssh.push_tree(project, GUEST_TREE, 300)
        ssh.run(
            f"/opt/zt/venv/bin/pip install -q --no-index --find-links /opt/zt/wheels "
            f"--no-build-isolation --no-deps -e {GUEST_TREE}",
            600,
        )
        routes = [f"{cidr}={via}" for cidr, via in routes_to_peers(lab, node)]
        out = ssh.run(
            shlex.join(
                [f"{GUEST_TREE}/vagrant/provision/pods.sh", str(node.index), str(lab.pods), *routes]
            ),
            120,
        )
        print(f"vm[{paths.kernel}]: {node.name}: {out.stdout.strip()}")


# Under software emulation a bcc compile takes 3-8 s and Python starts slowly: stretch the tests'
# patience deadlines (zt.timescale), and keep the soak to a size that ends within minutes.
# ZT_REQUIRE_KTLS: the kTLS tier (tests/ktls) fails instead of skipping: these kernels have it.
SLOW_GUEST_ENV = {"ZT_TIME_SCALE": "10", "ZT_SOAK_TUNNELS": "500", "ZT_REQUIRE_KTLS": "1"}


def _pytest(
    ssh: Ssh, args: list[str], env: dict[str, str], junit: str, timeout_s: float
) -> Summary:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = (
        f"cd {GUEST_TREE} && {exports} {GUEST_PY} -m pytest -p no:cacheprovider -q -rfE "
        f"--junitxml={junit} {shlex.join(args)}"
    )
    status = ssh.stream(command, timeout_s)
    xml = ssh.run(f"cat {junit}", 60, check=False)
    if xml.returncode != 0:
        raise GuestCommandError(f"{ssh.node}: pytest exited {status} and wrote no {junit}")
    return parse_junit(xml.stdout)


def add(a: Summary, b: Summary) -> Summary:
    return Summary(
        a.passed + b.passed, a.failed + b.failed, a.errors + b.errors, a.skipped + b.skipped,
        round(a.seconds + b.seconds, 1), a.failures + b.failures,
    )  # fmt: skip


def run_tests(
    paths: Paths,
    lab: Lab,
    tiers: tuple[str, ...],
    *,
    boot_s: tuple[float, ...],
    started: float,
    timeout_s: float,
) -> KernelResult:
    """The node smoke tier on every node, then zt's tiers on node 1."""
    kver = paths.kver()
    smoke = Summary()
    for node in lab.nodes:
        peers = [
            f"10.{p.index}.0.{n + 1}"
            for p in lab.nodes
            if p != node
            for n in range(1, lab.pods + 1)
        ]
        env = {
            "ZT_VM_KVER": kver,
            "ZT_VM_LOCAL_POD": f"pod{node.index}-1",
            "ZT_VM_PEER_PODS": " ".join(peers),
        }
        print(f"vm[{paths.kernel}]: {node.name}: node smoke tier")
        smoke = add(
            smoke,
            _pytest(
                node_ssh(paths, lab, node), ["vagrant/guest_tests"], env, "/root/smoke.xml", 900
            ),
        )
    tests = Summary()
    notes: list[str] = []
    if tiers:
        print(f"vm[{paths.kernel}]: node1: zt tiers {' '.join(tiers)}")
        tests = _pytest(
            node_ssh(paths, lab, lab.nodes[0]),
            list(tiers),
            SLOW_GUEST_ENV,
            "/root/tiers.xml",
            timeout_s,
        )
    else:
        notes.append("no zt test tier present in this checkout; only the node smoke tier ran")
    return KernelResult(
        paths.kernel,
        kver,
        lab.accel,
        boot_s,
        tiers,
        tests,
        smoke,
        round(time.monotonic() - started, 1),
        tuple(notes),
    )


def shutdown(paths: Paths, lab: Lab | None) -> None:
    """`systemctl poweroff` over ssh, then by PID from the pidfiles (vagrant/README.md); keeps the logs."""
    if lab is not None and paths.key.exists():
        for node in lab.nodes:
            pidfile = paths.run / f"{node.name}.pid"
            if pidfile.exists() and qemu.alive(int(pidfile.read_text())):
                node_ssh(paths, lab, node).run("systemctl poweroff", 20, check=False)
    for pidfile in sorted(paths.run.glob("*.pid")):
        pid = int(pidfile.read_text())
        if qemu.is_our_qemu(pid, str(paths.run)):
            deadline = time.monotonic() + 60
            while qemu.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            qemu.stop(pid)
            print(f"vm[{paths.kernel}]: qemu pid {pid} stopped")
        pidfile.unlink()
    if paths.run.exists():
        paths.logs.mkdir(parents=True, exist_ok=True)
        for log in (*paths.run.glob("*.serial"), *paths.run.glob("*.log")):
            shutil.copy(log, paths.logs / log.name)
        shutil.rmtree(paths.run)


def load_lab(paths: Paths) -> Lab | None:
    state = paths.run / "lab.json"
    if not state.exists():
        return None
    raw = json.loads(state.read_text())
    raw["nodes"] = tuple(Node(**n) for n in raw["nodes"])
    return Lab(**raw)
