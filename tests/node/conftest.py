"""One lab for the node modules that take it as they find it (tests/node/lab.py `handed_on`).

Bringing a lab up and down costs several seconds (topology, CA, apps, two daemons compiling their
capture); the modules that only send traffic, change the mesh file and put it back, or kill and
restart a daemon share one. Modules that need other daemon flags (socks5, workers) or are about
start-up keep labs of their own. Package scope: torn down when tests/node is done, before any
later tier (and tests/zz_final) looks for leftovers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.node.lab import Lab, running_lab


@pytest.fixture(scope="package")
def node_lab() -> Iterator[Lab]:
    with running_lab("nd") as lab:
        yield lab
