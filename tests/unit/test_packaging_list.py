"""The wheel's package list (pyproject.toml) names every package on disk, and no top-level `cli`."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> tuple[list[str], dict[str, str]]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return list(setuptools["packages"]), dict(setuptools["package-dir"])


def test_every_package_on_disk_is_declared_and_the_cli_ships_inside_zt() -> None:
    packages, package_dir = _declared()
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "zt").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert package_dir == {"zt.cli": "cli"}
    # zt.capture.bpf holds the BPF sources (data only, no __init__.py; pyproject.toml says why)
    assert set(packages) == on_disk | {"zt.cli", "zt.capture.bpf"}
    assert not [p for p in packages if p.split(".")[0] != "zt"], "only zt is a top-level package"
