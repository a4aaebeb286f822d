"""vagrant/vm-test.mk, included next to the top-level Makefile: targets and the KERNEL knob
(dry runs with `make -n`: nothing is built or booted)."""

from __future__ import annotations

import os

import pytest

from tests.vm.helpers import ROOT, run

# `make vm-test KERNEL=6.1` runs these tests (target vm-tooling): without this, the outer make's
# command-line variables reach the dry runs through MAKEFLAGS and override their defaults.
_OUTER_MAKE = {"MAKEFLAGS", "MAKEOVERRIDES", "MFLAGS", "MAKELEVEL", "KERNEL", "VM_TIERS"}


def dry_run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _OUTER_MAKE}
    argv = ["make", "-n", "-f", "Makefile", "-f", "vagrant/vm-test.mk", *args]
    out = run(argv, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    ("knob", "kernels"),
    [((), "6.1 6.12"), (("KERNEL=all",), "6.1 6.12"), (("KERNEL=6.12",), "6.12")],
)
def test_vm_test_runs_each_selected_kernel_then_the_report(
    knob: tuple[str, ...], kernels: str
) -> None:
    out = dry_run("vm-test", *knob)
    assert "vagrant/setup-host.sh" in out
    assert "ZT_REQUIRE_VAGRANT=1" in out and "pytest -q -p no:cacheprovider tests/vm" in out
    assert f"for k in {kernels}; do vagrant/build-image.sh $k" in out
    assert f"for k in {kernels}; do" in out and 'vagrant/vm.py run $k --tiers "tests/netns' in out
    assert f"vagrant/vm.py report {kernels}" in out


def test_vm_tiers_knob_reaches_the_runner() -> None:
    out = dry_run("vm-test", "KERNEL=6.1", "VM_TIERS=tests/netns")
    assert 'vagrant/vm.py run $k --tiers "tests/netns"' in out


def test_vm_validate_checks_public_and_local_box_configurations() -> None:
    out = dry_run("vm-validate")
    assert "vagrant validate" in out
    assert "ZT_BOX=zt/bookworm-6.12" in out


def test_vm_clean_stops_lab_vms_before_deleting_the_cache() -> None:
    out = dry_run("vm-clean")
    assert out.index("vagrant/vm.py down") < out.index("rm -rf vagrant/.cache")
