"""Smoke tests run *inside* a lab node by vagrant/vm.py (not part of `make test` on the host).

They prove the node is what the zt test tiers assume: the kernel the image was built for, bcc
compiling and firing against that kernel's headers, BTF, bpffs and cgroup v2 mounted, and pods
(network namespaces) reaching the other node's pods over the node link.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

import pytest
from bcc import BPF

pytestmark = pytest.mark.root

KPROBE = r"""
BPF_ARRAY(hits, u64, 1);
int count_connect(struct pt_regs *ctx) {
    int zero = 0;
    u64 *n = hits.lookup(&zero);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def test_runs_the_kernel_the_image_was_built_for() -> None:
    assert platform.release() == os.environ["ZT_VM_KVER"]


def test_kernel_headers_match_running_kernel() -> None:
    assert Path(f"/lib/modules/{platform.release()}/build/include").is_dir()


def test_btf_bpffs_and_cgroup2_are_there() -> None:
    mounts = Path("/proc/mounts").read_text().split()
    assert Path("/sys/kernel/btf/vmlinux").is_file()
    assert "bpf" in mounts
    assert "cgroup2" in mounts


def test_bcc_compiles_and_a_kprobe_fires_on_tcp_connect() -> None:
    bpf = BPF(text=KPROBE.encode())  # bcc 0.26 warns on str arguments
    try:
        bpf.attach_kprobe(event=b"tcp_v4_connect", fn_name=b"count_connect")
        with socket.create_server(("127.0.0.1", 0)) as server:
            socket.create_connection(server.getsockname(), timeout=5).close()
        hits = bpf[b"hits"]
        assert hits[hits.Key(0)].value >= 1
    finally:
        bpf.cleanup()


@pytest.mark.parametrize("target", os.environ.get("ZT_VM_PEER_PODS", "").split())
def test_pod_reaches_pod_on_the_other_node(target: str) -> None:
    pod = os.environ["ZT_VM_LOCAL_POD"]
    out = subprocess.run(
        ["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "5", target],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
