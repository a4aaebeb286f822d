from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.helpers import Pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One mesh CA and a server + client workload certificate for the whole session."""
    directory: Path = tmp_path_factory.mktemp("mesh-ca")
    return Pki.create(directory)
