"""The sdist and wheel hold what an install needs (BPF sources as files, the licence, one top-level
package), and a node run from a fresh install, confined like examples/systemd/zt.service, carries
HBONE between two pods under BPF capture."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import subprocess
import tarfile
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import zt
from tests.node.lab import identity, running_lab
from tests.packaging.conftest import ROOT, Dist, install_env, venv_python
from zt.capture import hostcheck, loader
from zt.lab import mesh, runner
from zt.lab.apps import exchange
from zt.lab.state import STATE_ROOT

DIST_INFO = f"zt-{zt.__version__}.dist-info"
BPF_FILES = sorted(p.name for p in (ROOT / "bpf").iterdir() if p.suffix in (".c", ".h"))


def test_the_build_is_clean(dist: Dist) -> None:
    # dist builds without isolation: this venv's setuptools stands in for [build-system]'s
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    assert all(version(r.name) in r.specifier for r in wanted), wanted
    # setuptools' and build's forms: "warning: ...", "WARNING ...", "...DeprecationWarning: ..."
    warnings = [line for line in dist.log.splitlines() if re.search(r"(?i)warning[: ]", line)]
    assert warnings == []
    assert dist.wheel.name == f"zt-{zt.__version__}-py3-none-any.whl"
    assert dist.sdist.name == f"zt-{zt.__version__}.tar.gz"


def test_the_sdist_holds_the_bpf_sources_as_regular_files(dist: Dist) -> None:
    prefix = f"zt-{zt.__version__}/zt/capture/bpf/"
    with tarfile.open(dist.sdist) as tar:
        members = {m.name[len(prefix) :]: m for m in tar.getmembers() if m.name.startswith(prefix)}
        assert sorted(members) == BPF_FILES
        for name, member in members.items():
            assert member.isfile(), f"{name}: tar type {member.type!r}, expected a regular file"
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == (ROOT / "bpf" / name).read_bytes(), name
        assert f"zt-{zt.__version__}/LICENSE" in tar.getnames()


def test_the_wheel_file_list(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as whl:
        infos = {i.filename: i for i in whl.infolist()}
        bpf = {n.removeprefix("zt/capture/bpf/"): i for n, i in infos.items() if "/bpf/" in n}
        assert sorted(bpf) == BPF_FILES
        for name, info in bpf.items():
            mode = info.external_attr >> 16
            assert stat.S_ISREG(mode), f"{name}: mode {mode:o}, expected a regular file"
            assert whl.read(info) == (ROOT / "bpf" / name).read_bytes(), name
        # one top-level package: the CLI ships as zt.cli, never as a top-level `cli`
        assert {n.split("/")[0] for n in infos} == {"zt", DIST_INFO}
        assert "zt/cli/main.py" in infos
        assert whl.read(f"{DIST_INFO}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        metadata = whl.read(f"{DIST_INFO}/METADATA").decode().splitlines()
        entry_points = whl.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {zt.__version__}" in metadata
    assert not [line for line in metadata if line.startswith("Classifier: License")]
    assert "zt = zt.cli.main:main" in entry_points


def _outside(cwd: Path, *argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run argv in cwd (outside the checkout) without PYTHONPATH: nothing from the checkout."""
    env = install_env()
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_installed_zt_prints_its_version_and_imports_nothing_from_the_checkout(
    installed_zt: Path, tmp_path: Path
) -> None:
    done = _outside(tmp_path, installed_zt, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"zt {zt.__version__}\n", "")
    probe = "import zt, zt.capture.loader as l; print(zt.__file__, l.BPF_DIR, len(l.source_text()))"
    done = _outside(tmp_path, venv_python(installed_zt), "-c", probe)
    assert done.returncode == 0, done.stderr
    venv_root = installed_zt.parents[1]
    module, bpf_dir, source_chars = done.stdout.split()
    assert Path(module).is_relative_to(venv_root), done.stdout
    assert Path(bpf_dir).is_relative_to(venv_root), done.stdout
    # the checkout reads the same sources through its symlink, with the same lookup
    assert Path(str(loader.BPF_DIR)).resolve() == ROOT / "bpf"
    assert int(source_chars) == len(loader.source_text())


# Capability numbers (linux/capability.h) of what the units may grant.
CAP_BITS = {
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def _unit_capabilities() -> list[str]:
    unit = (ROOT / "examples" / "systemd" / "zt.service").read_text()
    found = re.search(r"^CapabilityBoundingSet=(.+)$", unit, re.MULTILINE)
    assert found is not None
    return found.group(1).split()


# MemoryDenyWriteExecute=yes in the kernel's own form: no mapping of the process (nor of what it
# executes) may become executable after the fact. Inherited across fork and execve.
_MDWE_EXEC = """import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    raise SystemExit(f"prctl(PR_SET_MDWE): errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""


def _confined_like_the_unit(zt_bin: Path, directory: Path) -> Path:
    """A wrapper that runs zt_bin the way zt.service confines it, as far as that goes without
    systemd: the unit's capability bounding set (setpriv), a read-only root and cgroup tree
    (ProtectSystem=strict, ProtectControlGroups=yes) in a mount namespace of its own, with the
    lab's state root writable (the unit's RuntimeDirectory) and bpffs as writable as in the unit,
    and MemoryDenyWriteExecute=yes (the kernel's PR_SET_MDWE)."""
    cgroup = hostcheck.find_cgroup2()
    assert cgroup is not None
    caps = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in _unit_capabilities())
    mdwe = directory / "mdwe_exec.py"
    mdwe.write_text(_MDWE_EXEC)
    script = f"""#!/bin/sh
exec unshare --mount --propagation slave -- sh -ec '
mount --bind {STATE_ROOT} {STATE_ROOT}
mount -o remount,bind,ro /
mount -o remount,bind,ro {cgroup}
exec setpriv --bounding-set -all,{caps} --inh-caps -all -- \
    {zt_bin.with_name("python")} {mdwe} {zt_bin} "$@"' zt "$@"
"""
    wrapper = directory / "zt-confined"
    wrapper.write_text(script)
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.root
def test_a_node_run_from_the_install_confined_like_the_unit_carries_hbone(
    installed_zt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node tier's lab (two nodes, two pods each, BPF capture in connect mode), its `zt run`
    being the installed one, started outside the checkout and confined like zt.service (only its
    capabilities, read-only system and cgroup tree, no write-then-execute memory); pod1-1 talks to
    pod2-1 over HBONE."""
    monkeypatch.setattr(runner, "ZT", _confined_like_the_unit(installed_zt, tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    if "PYTHONPYCACHEPREFIX" in os.environ:  # the suite's bytecode cache (tests/conftest.py)
        monkeypatch.delenv("PYTHONPYCACHEPREFIX")  # the install reads its own bytecode
        monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # the pod apps write none here
    bounding = sum(1 << CAP_BITS[c] for c in _unit_capabilities())
    # Type=notify: each node sends READY=1 to the socket systemd would name, once it is ready
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    with notify:
        with running_lab("pk") as lab:
            # one per node (the notifier polls readiness: it may lag the lab's check)
            readies = [notify.recv(64), notify.recv(64)]
            notify.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                readies.append(notify.recv(64))
            assert readies == [b"READY=1", b"READY=1"]  # and sent once
            for node in ("node1", "node2"):
                pid = lab.pid(node)
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                assert os.fsencode(installed_zt) in argv, argv
                assert Path(os.readlink(f"/proc/{pid}/cwd")) == tmp_path
                status = Path(f"/proc/{pid}/status").read_text()
                assert f"CapBnd:\t{bounding:016x}" in status, status
            a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
            offsets = lab.offsets()
            payload = b"from the wheel " + bytes(range(256)) * 64

            ex = exchange(a.netns, str(b.ipv4), mesh.APP_PORT, payload)

            assert ex.error == "" and ex.received == payload
            out = lab.wait_record(
                "node1", offsets["node1"], direction="outbound", src__addr=ex.local
            )
            assert (out.get("protocol"), out.get("src.identity"), out.get("dst.identity")) == (
                "hbone", identity(a), identity(b)
            )  # fmt: skip
            inb = lab.wait_record(
                "node2", offsets["node2"], direction="inbound", dst__workload=b.name
            )
            assert (inb.get("protocol"), inb.get("src.identity")) == ("hbone", identity(a))
            assert inb.count("bytes_recv") == len(payload) == inb.count("bytes_sent")

        # the lab's down is each node's SIGTERM: STOPPING=1 as its drain begins
        notify.settimeout(0.3)
        stopping = []
        with contextlib.suppress(TimeoutError):
            while True:
                stopping.append(notify.recv(64))
        assert stopping == [b"STOPPING=1", b"STOPPING=1"]
