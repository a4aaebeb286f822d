"""Attachments live exactly as long as they should: close() detaches everything, and unpinned
links vanish with the process even when it is killed (docs/design.md §6: Tests use unpinned links
(they vanish with the process))."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.fixtures import Pod
from zt.capture import routing

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def _link_ids() -> set[int]:
    out = subprocess.run(
        ["bpftool", "link", "show", "-j"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    return {int(link["id"]) for link in json.loads(out or "[]")}


def test_close_detaches_everything(pod: Pod) -> None:
    st = pod.capture.status()
    ids = {link.link_id for link in st.links}
    assert ids and ids <= _link_ids()
    assert [p.name for p in st.pods] == [pod.spec.name]
    pod.capture.close()
    assert not ids & _link_ids()
    assert not routing.installed(pod.topo.pod_path)
    pod.capture.close()  # idempotent


_HOLDER = """
import sys
from zt.capture import Capture
cap = Capture.open(sys.argv[1])
print(" ".join(str(link.link_id) for link in cap.status().links), flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("mode", ["connect", "sklookup"])
def test_unpinned_links_vanish_when_the_process_is_killed(mode: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        ids = {int(x) for x in line.split()}
        # connect: connect4/6, sockops, getpeername4/6, getsockopt, bind4/6; sk_lookup: bind4/6;
        # DNS capture (on by default) adds sendmsg4/6, recvmsg4/6 (+ connect4/6, getpeername4/6)
        assert len(ids) == (12 if mode == "connect" else 10)
        assert ids <= _link_ids()
        proc.kill()  # SIGKILL: no close(), no atexit
        proc.wait(10)
        assert not ids & _link_ids()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
