"""Session fixtures of the packaging tier: zt built as `make dist` builds it, and installed.

`dist` builds the sdist and, from that sdist, the wheel, once per session, into a temporary
directory: `make dist`'s command without build isolation (isolation costs ~4 s: a fresh
environment with setuptools, twice), using the setuptools the test extras put in this venv
(test_wheel.py checks that it meets [build-system].requires).

`installed_zt` installs that wheel into a fresh venv (no system site-packages, nothing from this
checkout) and returns the venv's `bin/zt` as a pathlib.Path. Tests that need an installed zt (an
operator's view) take that fixture; its name and return type stay as they are. Like
scripts/setup-venv.sh, it links Debian's bcc into the venv: bcc is not a PyPI dependency
(pyproject.toml says why).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path
    log: str  # the build's output (tests check it holds no warning)


def install_env() -> dict[str, str]:
    """The environment for the installed zt, as an operator's shell has it: no PYTHONPATH (nothing
    from the checkout), and the install keeps its bytecode in its own venv (not this suite's
    PYTHONDONTWRITEBYTECODE or its bytecode cache, tests/conftest.py)."""
    drop = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(argv: list[str], what: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=180, check=False, env=env, cwd=cwd
    )
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done.stdout + done.stderr


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and wheel of this checkout, built like `make dist` (see the module's doc)."""
    out = tmp_path_factory.mktemp("dist")
    # byte-compiling is what a build does; with it disabled setuptools warns about skipping it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    argv = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)]
    log = _run(argv, "build", ROOT, env)
    sdists, wheels = sorted(out.glob("zt-*.tar.gz")), sorted(out.glob("zt-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"build made {os.listdir(out)}"
    return Dist(sdists[0], wheels[0], log)


@pytest.fixture(scope="session")
def installed_zt(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `zt` console script of a fresh venv that holds the wheel and its dependencies."""
    if not DEBIAN_BCC.is_dir():
        pytest.fail(f"{DEBIAN_BCC} missing: apt-get install python3-bpfcc (make setup does)")
    root = tmp_path_factory.mktemp("venv")
    # no pip inside: this interpreter's pip installs into it (--python), which saves seconds
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    # --no-compile: pip would compile every dependency (~4 s more), most of it never imported
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
         str(dist.wheel)],
        "pip install of the wheel",
        root,
    )  # fmt: skip
    # the venv runs this interpreter's version, so this scheme names its site-packages
    purelib = sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)})
    os.symlink(DEBIAN_BCC, Path(purelib) / "bcc")
    zt = root / "bin" / "zt"
    assert zt.is_file(), f"the wheel installed no zt script in {root / 'bin'}"
    # Rather than compiling everything: one `zt --help` writes the bytecode of what the CLI and
    # the daemon import (~2 s), so that every later zt command starts in ~0.7 s instead of ~1.8 s.
    # It runs in the venv, never in the checkout: `python -c` puts its cwd first on sys.path.
    env = install_env()
    warm = "import sys, zt.capture.loader, zt.cli.main as m; sys.argv = ['zt', '--help']; m.main()"
    _run([str(python), "-c", warm], "zt --help from the install", root, env)
    return zt


def venv_python(zt: Path) -> Path:
    """The interpreter of the venv `installed_zt` made."""
    return zt.with_name("python")


__all__ = ["DEBIAN_BCC", "ROOT", "Dist", "dist", "installed_zt", "venv_python"]
