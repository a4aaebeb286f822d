"""Paths and runners shared by the VM-lab tooling tests (no VM is booted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"


def run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=cwd
    )


def vm_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """vagrant/vm.py with this interpreter (the project venv: vm.py uses zt's error tree)."""
    return run([sys.executable, str(VAGRANT / "vm.py"), *args], env=env)
