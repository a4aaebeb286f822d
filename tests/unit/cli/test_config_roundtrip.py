"""`zt config dump` writes a mesh file `zt config check` accepts; `-` reads either from stdin.
Policy principals are validated where the file is read."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

EXAMPLE = str(Path(__file__).resolve().parents[3] / "examples" / "mesh.yaml")
runner = CliRunner()


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_dump_passes_check_through_stdin(as_json: list[str]) -> None:
    dumped = runner.invoke(app, ["config", "dump", EXAMPLE, *as_json])
    assert dumped.exit_code == 0, dumped.output
    checked = runner.invoke(app, ["config", "check", "-"], input=dumped.stdout)
    assert checked.exit_code == 0, checked.output
    assert "5 workloads on 2 nodes, 1 services, 2 policies" in checked.stdout
    again = runner.invoke(app, ["config", "dump", "-", *as_json], input=dumped.stdout)
    assert again.exit_code == 0, again.output
    assert again.stdout == dumped.stdout  # the normal form is a fixed point


def _policy(principal: str) -> str:
    return (
        "policies:\n"
        "  - {name: p, scope: Global, action: Allow,"
        f" rules: [[[{{principals: ['{principal}']}}]]]}}\n"
    )


@pytest.mark.parametrize(
    "principal",
    ["cluster.local/ns/default/sa/frontend", "*", "cluster.local/ns/default/*", "*/sa/frontend"],
)
def test_principals_in_istio_form_are_accepted(principal: str) -> None:
    result = runner.invoke(app, ["config", "check", "-"], input=_policy(principal))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("principal", "hint"),
    [
        ("spiffe://cluster.local/ns/default/sa/frontend", "drop 'spiffe://'"),
        ("cluster.local/ns/default", "path must be exactly /ns/<namespace>/sa/<service-account>"),
        ("Cluster.Local/ns/a/sa/b", "trust domain 'Cluster.Local'"),
        ("cluster.local/ns/a b/sa/c", "namespace 'a b'"),
        ("clu*ster", "<trust-domain>/ns/<namespace>/sa/<service-account>"),
        ("*a b", "'*suffix'"),
    ],
)
def test_malformed_principals_are_refused_naming_field_and_value(principal: str, hint: str) -> None:
    result = runner.invoke(app, ["config", "check", "-"], input=_policy(principal))
    assert result.exit_code == 2
    line = next(ln for ln in result.stderr.splitlines() if "principals" in ln)
    assert f"policies[0].rules[0][0][0].principals[0]: got {principal!r}, expected" in line
    assert hint in line
