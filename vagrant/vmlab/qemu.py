"""Thin process adapter for QEMU: overlays, start, stop by PID, the one-off KVM probe."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from vmlab.errors import BootError, VmLabError
from vmlab.plan import Image, accel_args


def free_ports(count: int) -> tuple[int, ...]:
    """Distinct ports the kernel just handed out on 127.0.0.1, all held open at once so none
    repeats (closed again before QEMU binds them)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(int(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()


def listening(port: int, tcp_table: str | None = None) -> bool:
    """True if 127.0.0.1:<port> is in LISTEN state (/proc/net/tcp; st 0A = LISTEN).

    Checked without connecting: a probe connection would be taken by QEMU's socket netdev."""
    table = tcp_table if tcp_table is not None else Path("/proc/net/tcp").read_text()
    want = f"0100007F:{port:04X}"
    return any(
        fields[1] == want and fields[3] == "0A"
        for fields in (line.split() for line in table.splitlines()[1:])
        if len(fields) > 3
    )


def make_overlay(base: Path, overlay: Path) -> None:
    """One qcow2 overlay per VM keeps the cached image clean (vagrant/README.md)."""
    overlay.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        check=True,
    )


def start(argv: list[str], pidfile: Path, log: Path) -> int:
    """Starts QEMU in its own session (our signals don't reach it; we stop it by PID)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (we reap our own children)."""
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (started by another vm.py call): ask /proc
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return waited == 0


def is_our_qemu(pid: int, marker: str) -> bool:
    """Guards kill-by-pidfile against a recycled PID: the command line must name our run dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "qemu-system" in cmdline and marker in cmdline


def stop(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after grace_s; returns once the process is gone."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.2)
    if alive(pid):
        raise VmLabError(f"qemu pid {pid} survived SIGKILL")


def wait_listening(pid: int, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not listening(port):
        if not alive(pid):
            raise BootError(f"qemu pid {pid} exited before listening on 127.0.0.1:{port}")
        if time.monotonic() > deadline:
            raise BootError(
                f"qemu pid {pid} not listening on 127.0.0.1:{port} after {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def probe_kvm(image: Image, timeout_s: float = 25.0) -> tuple[bool, str]:
    """Boots the image's kernel under KVM with no root fs; KVM works if the kernel gets as far as
    panicking over the missing root (vagrant/README.md: nested PVM KVM aborts on MSR 0x10a or hangs)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm not usable"
    argv = [
        "qemu-system-x86_64", *accel_args("kvm"), "-m", "512", "-nodefaults", "-display", "none",
        "-no-reboot", "-serial", "stdio", "-kernel", str(image.kernel),
        "-append", "console=ttyS0 panic=-1 root=/dev/zt-no-such-disk",
    ]  # fmt: skip
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False, f"no kernel panic within {timeout_s:.0f} s (hang)"
    text = out.stdout.decode(errors="replace")
    if "Kernel panic" in text or "VFS: Unable to mount root" in text:
        return True, "kernel booted under KVM"
    err = (out.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    return False, f"qemu exited {out.returncode}: {err}"
