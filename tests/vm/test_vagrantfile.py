"""`vagrant validate` on the top-level Vagrantfile, offline, with its knobs.

Vagrant is a VM-lab host tool (vagrant/setup-host.sh installs it; `make setup` does not): without it
these tests skip, unless ZT_REQUIRE_VAGRANT=1 (as `make vm-test` runs them) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.vm.helpers import ROOT, run


@pytest.fixture
def vagrant_env(tmp_path: Path) -> dict[str, str]:
    if shutil.which("vagrant") is None:
        if os.environ.get("ZT_REQUIRE_VAGRANT") == "1":
            pytest.fail("vagrant is not installed: run vagrant/setup-host.sh", pytrace=False)
        pytest.skip("vagrant not installed (VM-lab host tool: vagrant/setup-host.sh installs it)")
    # Keep Vagrant's state dir out of the work tree.
    return {
        **os.environ,
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"ZT_KERNEL": "6.12", "ZT_NODES": "3", "ZT_PODS": "4", "ZT_MEMORY": "2048", "ZT_CPUS": "2"},
        {"ZT_BOX": "zt/bookworm-6.12", "ZT_LIBVIRT_DRIVER": "qemu"},
    ],
    ids=["public-box", "knobs", "local-box"],
)
def test_vagrantfile_validates(vagrant_env: dict[str, str], knobs: dict[str, str]) -> None:
    out = run(["vagrant", "validate"], env={**vagrant_env, **knobs}, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout
    assert not (ROOT / ".vagrant").exists() or "VAGRANT_DOTFILE_PATH" not in vagrant_env


def test_bad_knob_is_refused_naming_it(vagrant_env: dict[str, str]) -> None:
    out = run(["vagrant", "validate"], env={**vagrant_env, "ZT_NODES": "two"}, cwd=ROOT)
    assert out.returncode != 0
    assert 'ZT_NODES: got "two", expected an integer in [1, 9]' in out.stdout + out.stderr
