"""The admin endpoint stays on loopback unless the operator forces it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from zt.addr import SocketAddr
from zt.node.options import NodeOptions, RemoteAdminRefused


def _options(admin: str, *, allow_remote: bool = False) -> NodeOptions:
    return NodeOptions(
        config=Path("mesh.yaml"),
        node="n1",
        admin=SocketAddr.parse(admin),
        admin_allow_remote=allow_remote,
    )


@pytest.mark.parametrize("admin", ["127.0.0.1:15000", "127.9.9.9:15000", "[::1]:15000",
                                   "[::ffff:127.0.0.1]:15000"])  # fmt: skip
def test_loopback_admin_is_accepted(admin: str) -> None:
    assert _options(admin).admin == SocketAddr.parse(admin)


@pytest.mark.parametrize("admin", ["0.0.0.0:15000", "[::]:15000", "10.1.2.3:15000",
                                   "[fd00::1]:15000", "[::ffff:10.0.0.1]:15000"])  # fmt: skip
def test_remote_admin_is_refused_unless_forced(admin: str) -> None:
    with pytest.raises(RemoteAdminRefused) as info:
        _options(admin)
    assert str(info.value).startswith(
        f"--admin-addr: got {SocketAddr.parse(admin)}, expected a loopback"
    )
    assert "--admin-allow-remote" in str(info.value)
    assert _options(admin, allow_remote=True).admin_allow_remote


def test_zt_run_refuses_remote_admin_before_starting(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("{}\n")  # --config must name a file that exists
    result = CliRunner().invoke(
        app, ["run", "--config", str(mesh), "--node", "n1", "--admin-addr", "0.0.0.0:15000"]
    )
    assert result.exit_code == 2
    assert "zt: --admin-addr: got 0.0.0.0:15000, expected a loopback address" in result.stderr
