"""`zt ca init|issue|show` through typer's runner (the `ca` sub-app that cli.main mounts)."""

from __future__ import annotations

import importlib
import json
import stat
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from cli.ca_cmd import app
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.spiffe import SpiffeId

runner = CliRunner()
ID = "spiffe://cluster.local/ns/shop/sa/cart"


def test_init_then_refuse_then_force(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    first = runner.invoke(app, ["init", "--ca-dir", str(d)])
    assert first.exit_code == 0, first.output
    fp = CertificateAuthority.load(d).fingerprint
    assert first.stdout.strip() == f"CA in {d}: trust domain cluster.local, sha256 {fp}"
    again = runner.invoke(app, ["init", "--ca-dir", str(d)])
    assert again.exit_code == 2
    assert f"zt: a CA already exists in {d}; pass --force to replace it" in again.stderr
    assert CertificateAuthority.load(d).fingerprint == fp
    forced = runner.invoke(app, ["init", "--ca-dir", str(d), "--force", "--trust-domain", "m.io"])
    assert forced.exit_code == 0, forced.output
    assert CertificateAuthority.load(d).trust_domain == "m.io"


def test_issue_writes_three_files(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert runner.invoke(app, ["init", "--ca-dir", str(d)]).exit_code == 0
    out = tmp_path / "cart"
    res = runner.invoke(app, ["issue", "--ca-dir", str(d), "--spiffe", ID, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [f"{out}.pem", f"{out}.key", f"{out}-bundle.pem"]
    assert stat.S_IMODE(Path(f"{out}.key").stat().st_mode) == 0o600
    cert = WorkloadCert.read(out)
    assert cert.identity == SpiffeId.parse(ID)
    assert cert.lifetime == 86400
    assert cert.roots_pem == (d / "ca.pem").read_bytes()


def test_issue_errors_name_the_value(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    out = str(tmp_path / "x")
    no_ca = runner.invoke(app, ["issue", "--ca-dir", str(d), "--spiffe", ID, "--out", out])
    assert no_ca.exit_code == 2
    assert f"zt: no CA in {d}" in no_ca.stderr
    assert runner.invoke(app, ["init", "--ca-dir", str(d)]).exit_code == 0
    bad_id = "spiffe://x/a"
    bad = runner.invoke(app, ["issue", "--ca-dir", str(d), "--spiffe", bad_id, "--out", out])
    assert bad.exit_code == 2
    assert "--spiffe: got 'spiffe://x/a', expected spiffe://<trust-domain>/ns/" in bad.stderr
    other = "spiffe://other.td/ns/a/sa/b"
    foreign = runner.invoke(app, ["issue", "--ca-dir", str(d), "--spiffe", other, "--out", out])
    assert foreign.exit_code == 2
    assert f"got '{other}', expected one in trust domain 'cluster.local'" in foreign.stderr
    assert not Path(out + ".key").exists()


def test_issue_never_writes_into_the_ca_dir(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    assert runner.invoke(app, ["init", "--ca-dir", str(d)]).exit_code == 0
    key = (d / "ca.key").read_bytes()
    res = runner.invoke(app, ["issue", "--ca-dir", str(d), "--spiffe", ID, "--out", str(d / "ca")])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"zt: --out: got '{d / 'ca'}', expected a path outside --ca-dir")
    assert (d / "ca.key").read_bytes() == key


def test_show_lists_issued_identities(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    init = runner.invoke(app, ["init", "--ca-dir", str(d), "--trust-domain", "cluster.local"])
    assert init.exit_code == 0
    for i in (ID, ID, "spiffe://cluster.local/ns/shop/sa/pay"):
        res = runner.invoke(
            app, ["issue", "--ca-dir", str(d), "--spiffe", i, "--out", str(tmp_path / "w")]
        )
        assert res.exit_code == 0, res.output
    text = runner.invoke(app, ["show", "--ca-dir", str(d)])
    assert text.exit_code == 0, text.output
    ca = CertificateAuthority.load(d)
    assert f"sha256_fingerprint: {ca.fingerprint}" in text.stdout
    assert "subject: CN=zt embedded CA cluster.local,O=cluster.local" in text.stdout
    assert "validity: " in text.stdout
    assert "issued identities: 2" in text.stdout
    assert f"  {ID} (latest valid until " in text.stdout
    doc = json.loads(runner.invoke(app, ["show", "--ca-dir", str(d), "--json"]).stdout)
    assert [x["identity"] for x in doc["issued"]] == [ID, "spiffe://cluster.local/ns/shop/sa/pay"]
    assert doc["trust_domain"] == "cluster.local"
    assert doc["sha256_fingerprint"] == ca.fingerprint


def test_init_imports_operator_ca(tmp_path: Path) -> None:
    src = CertificateAuthority.init(tmp_path / "operator", "corp.io")
    d = tmp_path / "ca"
    args = ["init", "--ca-dir", str(d), "--trust-domain", "corp.io"]
    only_cert = runner.invoke(app, [*args, "--cert", str(tmp_path / "operator" / "ca.pem")])
    assert only_cert.exit_code == 2
    assert "--cert and --key: expected both or neither" in only_cert.stderr
    res = runner.invoke(
        app,
        [
            *args,
            "--cert",
            str(tmp_path / "operator" / "ca.pem"),
            "--key",
            str(tmp_path / "operator" / "ca.key"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert CertificateAuthority.load(d).fingerprint == src.fingerprint
    missing = runner.invoke(
        app, ["init", "--ca-dir", str(tmp_path / "c2"), "--cert", "/nonexistent", "--key", "/x"]
    )
    assert missing.exit_code == 2
    assert (
        "--cert: got '/nonexistent', expected a readable PEM file (No such file or directory)"
        in (missing.stderr)
    )


def test_mounted_as_zt_ca(tmp_path: Path) -> None:
    """The `ca` sub-app is reachable through the real `zt` entry point's app."""
    # imported here so a broken sibling sub-app fails this test, not the whole module
    zt_app = importlib.import_module("cli.main").app
    d = tmp_path / "ca"
    res = runner.invoke(zt_app, ["ca", "init", "--ca-dir", str(d), "--trust-domain", "m.io"])
    assert res.exit_code == 0, res.output
    shown = runner.invoke(zt_app, ["ca", "show", "--ca-dir", str(d), "--json"])
    assert json.loads(shown.stdout)["trust_domain"] == "m.io"


def test_fingerprint_matches_openssl(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = CertificateAuthority.init(d)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(d / "ca.pem")],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert out.strip().split("=", 1)[1] == ca.fingerprint
