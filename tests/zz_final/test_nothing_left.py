"""Runs last in a whole-suite run (the `zz_` name): nothing capture made may outlive the tests.

zt never uses netfilter, so iptables/nft show nothing of it; no `ztcap-` netns, no zt BPF link
(cgroup or sk_lookup) held by this process or by nobody (i.e. pinned and forgotten), no zt
program attached at the cgroup-v2 root except through links a *different* live process holds
(a zt running beside the tests), nothing pinned under the zt pin dirs. Also correct when run alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import pytest

from zt.capture.hostcheck import find_cgroup2

pytestmark = pytest.mark.root

# zt's marks (0x539; 0x53a on original-source deliveries) and ports
_ZT_MARKS: tuple[str, ...] = ("ztcap", "0x539", "0x00000539", "1337", "0x53a", "0x0000053a")
_ZT_MARKS += ("15001", "15006", "15008")


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
    return done.stdout.strip()


def _link_holders() -> dict[int, set[int]]:
    """BPF link id -> pids holding an fd to it (from /proc/*/fdinfo: `link_id:`)."""
    holders: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fdinfo").iterdir())
        except OSError:
            continue  # the process exited meanwhile
        for fd in fds:
            try:
                text = fd.read_text()
            except OSError:
                continue
            m = re.search(r"^link_id:\s+(\d+)", text, re.MULTILINE)
            if m:
                holders.setdefault(int(m.group(1)), set()).add(int(proc.name))
    return holders


def _zt_prog_ids() -> dict[int, str]:
    progs = json.loads(_run("bpftool", "prog", "show", "-j") or "[]")
    return {int(p["id"]): p.get("name", "") for p in progs if p.get("name", "").startswith("zt_")}


def test_kernel_printed() -> None:
    print(f"\n[capture final check] kernel {platform.release()}")


def test_no_netfilter_rules() -> None:
    for cmd in (("iptables-save",), ("ip6tables-save",), ("nft", "list", "ruleset")):
        out = _run(*cmd)
        found = [mark for mark in _ZT_MARKS if mark in out]
        assert not found, f"{' '.join(cmd)} shows {found}:\n{out}"


def test_no_netns_left() -> None:
    names = _run("ip", "netns", "list")
    # ztcap-: capture tests; zt-: labs and the node tests (zt-<lab>-node1, ...)
    left = [line for line in names.splitlines() if line.startswith(("ztcap-", "zt-"))]
    assert not left, f"network namespaces left behind: {left}"


def test_no_bpf_link_left() -> None:
    zt_progs = _zt_prog_ids()
    links = json.loads(_run("bpftool", "link", "show", "-j") or "[]")
    holders = _link_holders()
    me = os.getpid()
    leftovers = []
    for link in links:
        if int(link.get("prog_id", 0)) not in zt_progs:
            continue
        owners = holders.get(int(link["id"]), set())
        if not owners - {me}:  # held by nobody (a forgotten pin) or by this test process
            leftovers.append(link)
    assert not leftovers, f"zt BPF links left behind: {leftovers}"


def test_no_cgroup_attachment_left() -> None:
    cgroup = find_cgroup2()
    assert cgroup is not None
    zt_progs = _zt_prog_ids()
    attached = json.loads(_run("bpftool", "cgroup", "show", str(cgroup), "-j") or "[]")
    holders = _link_holders()
    me = os.getpid()
    links = json.loads(_run("bpftool", "link", "show", "-j") or "[]")
    foreign = {int(link["prog_id"]) for link in links if holders.get(int(link["id"]), set()) - {me}}
    left = [a for a in attached if int(a["id"]) in zt_progs and int(a["id"]) not in foreign]
    assert not left, f"zt programs still attached at {cgroup}: {left}"


def test_nothing_pinned() -> None:
    bpffs = Path("/sys/fs/bpf")
    left = sorted(str(p) for p in bpffs.glob("ztcap-*")) + sorted(
        str(p) for p in bpffs.glob("zt-*")
    )
    zt_dir = bpffs / "zt"
    if zt_dir.exists():
        left += sorted(str(p) for p in zt_dir.iterdir())
    assert not left, f"pins left behind: {left}"


def test_no_lab_state_left() -> None:
    left = sorted(str(p) for p in Path("/run/zt").glob("lab-*")) if Path("/run/zt").exists() else []
    assert not left, f"lab state left behind: {left}"
