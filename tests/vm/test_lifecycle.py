"""`vm.py` up/down bookkeeping without booting: idempotent down, clear errors when nothing is built
or up, and the PID guard that keeps `down` from killing a process that is not this lab's QEMU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.vm.helpers import vm_py


def cache_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "ZT_VM_CACHE": str(cache), "ZT_VM_ACCEL": "tcg"}


def test_down_with_nothing_up_is_fine_twice(tmp_path: Path) -> None:
    for _ in range(2):
        out = vm_py("down", "6.12", env=cache_env(tmp_path))
        assert (out.returncode, out.stdout.strip()) == (0, "vm[6.12]: down")


def test_run_without_an_image_says_how_to_build_it_and_leaves_nothing(tmp_path: Path) -> None:
    out = vm_py("run", "6.12", env=cache_env(tmp_path))
    assert out.returncode == 2
    assert "not built; run vagrant/build-image.sh 6.12" in out.stderr
    assert not (tmp_path / "run" / "6.12").exists()


def test_test_without_a_lab_up_is_an_error(tmp_path: Path) -> None:
    out = vm_py("test", "6.1", env=cache_env(tmp_path))
    assert out.returncode == 1
    assert "no lab is up" in out.stderr


def test_down_never_kills_a_pid_that_is_not_this_labs_qemu(tmp_path: Path) -> None:
    run_dir = tmp_path / "run" / "6.1"
    run_dir.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / "node1.pid").write_text(f"{bystander.pid}\n")
        (run_dir / "node1.serial").write_text("console log\n")
        out = vm_py("down", "6.1", env=cache_env(tmp_path))
        assert out.returncode == 0, out.stderr
        assert bystander.poll() is None  # still running
        assert not run_dir.exists()
        assert (tmp_path / "logs" / "6.1" / "node1.serial").read_text() == "console log\n"
    finally:
        bystander.kill()
        bystander.wait(5)
