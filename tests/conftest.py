"""Suite-wide policy.

* Every run prints the kernel it ran on (capture behaviour depends on it).
* Tests marked `root` need root, network namespaces or BPF. They never skip: without root they fail
  with a message that says so, because a silently skipped capture test proves nothing.
"""

from __future__ import annotations

import os
import platform

import pytest


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"kernel: {platform.release()} ({platform.machine()}), uid={os.geteuid()}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(
            f"{item.nodeid} needs root (network namespaces / BPF); run the suite as root "
            "(CI does) — root tests fail rather than skip",
            pytrace=False,
        )
