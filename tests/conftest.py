"""Suite-wide policy.

* Every run prints the kernel it ran on (capture behaviour depends on it).
* Tests marked `root` need root, network namespaces or BPF. They never skip: without root they fail
  with a message that says so, because a silently skipped capture test proves nothing.
* Bytecode is cached, outside the checkout, even where the environment says PYTHONDONTWRITEBYTECODE
  (this machine's does): the suite starts hundreds of Python processes (node daemons, `zt`
  commands, pod apps, attackers) that would each compile zt again, and pytest would rewrite the
  asserts of every test module on every run (~4 s of collection).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest


def _cache_bytecode() -> None:
    """Honour the wish behind PYTHONDONTWRITEBYTECODE (no __pycache__ in the checkout) with a
    cache in the venv (PYTHONPYCACHEPREFIX, inherited by every process the tests start; `make
    clean` removes it). Without that variable, Python's own __pycache__ is left as it is."""
    if not os.environ.pop("PYTHONDONTWRITEBYTECODE", ""):
        return
    prefix = os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(sys.prefix) / "pycache"))
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


_cache_bytecode()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"kernel: {platform.release()} ({platform.machine()}), uid={os.geteuid()}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(
            f"{item.nodeid} needs root (network namespaces / BPF); run the suite as root "
            "(CI does) — root tests fail rather than skip",
            pytrace=False,
        )
