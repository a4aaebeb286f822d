"""The CLI surface of the mesh's brain: `zt config`, `zt authz check`, `zt route`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "mesh.yaml")
runner = CliRunner()


def test_config_check_ok() -> None:
    result = runner.invoke(app, ["config", "check", EXAMPLE])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("5 workloads on 2 nodes, 1 services, 2 policies")


def test_config_check_bad_file_exit_2_with_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads:\n  - {uid: a, name: a, workloadIps: [10.0.0.1, 300.1.1.1]}\n")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: workloads[0].workloadIps[1]: got '300.1.1.1', expected" in result.output


def test_config_dump_json_roundtrips(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "dump", EXAMPLE, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    a1 = doc["workloads"][0]
    assert a1["trustDomain"] == "cluster.local" and a1["serviceAccount"] == "frontend"
    assert "identity" not in a1  # derived: not a field of the mesh file
    again = tmp_path / "again.json"
    again.write_text(json.dumps(doc))
    assert runner.invoke(app, ["config", "check", str(again)]).exit_code == 0


def test_config_dump_yaml() -> None:
    result = runner.invoke(app, ["config", "dump", EXAMPLE])
    assert result.exit_code == 0
    assert "serviceAccount: frontend" in result.output


def _authz(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["authz", "check", "--config", EXAMPLE, *args])
    return result.exit_code, result.output.splitlines()


def test_authz_allow_exit_0() -> None:
    code, lines = _authz(
        "--src-ip",
        "10.1.0.2",
        "--src-identity",
        "spiffe://cluster.local/ns/default/sa/frontend",
        "--dst",
        "10.2.0.3:8080",
    )
    assert code == 0
    assert lines == [
        "ALLOW",
        "policy: default/echo-frontend-only",
        "reason: allowed by ALLOW policy default/echo-frontend-only",
    ]


def test_authz_deny_exit_1() -> None:
    code, lines = _authz("--src-ip", "10.2.0.10", "--dst", "10.2.0.2:8080")
    assert code == 1
    assert lines[:2] == ["DENY", "policy: default/deny-legacy"]


def test_authz_plaintext_cannot_satisfy_principal_rule() -> None:
    code, lines = _authz("--src-ip", "10.1.0.2", "--dst", "[fd00:2::3]:8080")
    assert code == 1
    assert lines[0] == "DENY" and "no ALLOW policy matched" in lines[2]


def test_authz_bad_address_exit_2() -> None:
    code, lines = _authz("--src-ip", "10.1.0.2", "--dst", "fd00::1:80")
    assert code == 2
    assert "--dst" in lines[0] and "IPv6 needs brackets" in lines[0]


def _route(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["route", "--config", EXAMPLE, "--json", *args])
    return result.exit_code, result.output


def test_route_vip_json() -> None:
    code, out = _route("--src", "default/pod-a1", "--dst", "10.96.0.10:80")
    assert code == 0, out
    route = json.loads(out)
    assert route["kind"] == "hbone"
    assert route["next_hop"] in {"10.2.0.2:15008", "10.2.0.3:15008"}
    assert route["authority"].endswith(":8080")
    assert route["expected_identities"] == ["spiffe://cluster.local/ns/default/sa/echo"]
    assert route["reason"].startswith("service default/echo.default.svc.cluster.local port 80")


def test_route_kinds() -> None:
    kinds = {
        dst: json.loads(_route("--src", "default/pod-a1", "--dst", dst)[1])["kind"]
        for dst in (
            "10.2.0.10:5432",
            "192.0.2.1:443",
            "10.2.0.2:15008",
            "10.1.0.3:15008",
            "127.0.0.1:15000",
            "[fd00:2::2]:9",
        )
    }
    assert kinds == {
        "10.2.0.10:5432": "tcp",
        "192.0.2.1:443": "passthrough",
        # loop guard: zt's ports are refused towards loopback and this node's own pods only; a
        # remote pod's :15008 is a tunnel whose authority the remote zt answers with 400
        "10.2.0.2:15008": "hbone",
        "10.1.0.3:15008": "refused",
        "127.0.0.1:15000": "refused",
        "[fd00:2::2]:9": "hbone",
    }


@pytest.mark.parametrize("name", ["echo", "echo.default", "ECHO.default.svc.cluster.local."])
def test_route_by_mesh_hostname_prints_the_resolved_address_then_the_same_route(name: str) -> None:
    code, out = _route("--src", "default/pod-a1", "--dst", f"{name}:80")
    assert code == 0, out
    by_name = json.loads(out)
    resolved = by_name.pop("resolved")
    assert resolved["name"] == f"{name.lower().rstrip('.')}:80"
    assert resolved["address"] == "10.96.0.10:80"  # the service's IPv4 VIP
    assert "default/echo.default.svc.cluster.local" in resolved["how"]
    assert by_name == json.loads(_route("--src", "default/pod-a1", "--dst", "10.96.0.10:80")[1])
    text = runner.invoke(
        app, ["route", "--config", EXAMPLE, "--src", "default/pod-a1", "--dst", f"{name}:80"]
    ).output
    assert text.splitlines()[:2] == [
        f"resolved: {resolved['name']} -> 10.96.0.10:80 ({resolved['how']})",
        "kind: hbone",
    ]


@pytest.mark.parametrize(
    ("dst", "message"),
    [
        (
            "nope:80",
            "zt: --dst: got 'nope:80', expected a service or workload hostname of the mesh and"
            " a port (tried nope, nope.default.svc.cluster.local)",
        ),
        ("bad_name:80", "zt: --dst: got 'bad_name' (label 'bad_name'), expected a hostname of"),
        ("echo:0", "zt: --dst: got port '0' in 'echo:0', expected 1..65535"),
    ],
)
def test_route_unknown_or_bad_hostname_exit_2_naming_the_value(dst: str, message: str) -> None:
    code, out = _route("--src", "default/pod-a1", "--dst", dst)
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert out.startswith(message), out


def test_route_unknown_source_exit_2() -> None:
    code, out = _route("--src", "nope", "--dst", "10.96.0.10:80")
    assert code == 2
    assert "--src: got 'nope'" in out


def test_console_script_runs() -> None:
    zt = Path(sys.executable).parent / "zt"
    result = subprocess.run(
        [str(zt), "config", "check", EXAMPLE],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
