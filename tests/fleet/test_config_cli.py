"""`zt config push|get|diff` (and `-` for stdin) as an operator runs them, against real etcd."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from zt.config.loader import load_file, load_text
from zt.fleet.etcdserver import EtcdCluster

EXAMPLE = Path(__file__).parents[2] / "examples" / "mesh.yaml"
TEXT = EXAMPLE.read_text()
ZT = [sys.executable, "-c", "from cli.main import main; main()"]
runner = CliRunner()
_n = itertools.count()


def prefix() -> str:
    return f"/h2cli{next(_n)}"


def zt(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def flags(cluster: EtcdCluster, p: str) -> list[str]:
    return ["--etcd", ",".join(cluster.endpoints), "--etcd-prefix", p]


def test_push_get_diff(etcd1: EtcdCluster) -> None:
    f = flags(etcd1, prefix())
    code, out, err = zt("config", "push", str(EXAMPLE), *f)
    assert code == 0, err
    assert out.startswith(f"pushed {EXAMPLE}: 8 added, 0 changed, 0 removed (revision ")
    code, out, _ = zt("config", "push", str(EXAMPLE), *f)
    assert code == 0 and out.startswith("no change")

    code, out, _ = zt("config", "get", *f)
    assert code == 0
    body, _, last = out.rstrip("\n").rpartition("\n")
    assert last.startswith("# revision ") and int(last.split()[-1]) > 0
    assert sorted(map(repr, load_text(body, "get").workloads)) == sorted(
        map(repr, load_file(EXAMPLE).workloads)
    )
    code, out, _ = zt("config", "get", "--json", *f)
    got = json.loads(out)
    assert set(got) == {"revision", "document"} and len(got["document"]["workloads"]) == 5

    code, out, _ = zt("config", "diff", str(EXAMPLE), *f)
    assert (code, out.strip()) == (0, "no change")
    edited = TEXT.replace("serviceAccount: batch", "serviceAccount: jobs")
    code, out, _ = zt("config", "diff", "-", *f, stdin=edited)
    assert code == 1
    assert "~ /h2cli" in out and '+  "serviceAccount": "jobs",' in out
    assert out.rstrip().endswith("0 added, 1 changed, 0 removed")
    code, out, _ = zt("config", "push", "-", *f, stdin=edited)
    assert code == 0 and "0 added, 1 changed, 0 removed" in out
    code, out, _ = zt("config", "diff", "-", *f, stdin=edited)
    assert code == 0


def test_check_and_push_refuse_the_same_file(etcd1: EtcdCluster) -> None:
    bad = TEXT.replace("10.1.0.3", "10.1.0.2")
    code, _, check_err = zt("config", "check", "-", stdin=bad)
    assert code == 2
    code, _, push_err = zt("config", "push", "-", *flags(etcd1, prefix()), stdin=bad)
    assert code == 2 and push_err == check_err
    assert "<stdin>: workloads[1].workloadIps[0]: got '10.1.0.2'" in push_err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--etcd", "localhost:2379"], "--etcd: got 'localhost:2379'"),
        (["--etcd", "http://127.0.0.1:1", "--etcd-prefix", "zt"], "--etcd-prefix: got 'zt'"),
        (["--etcd", "http://127.0.0.1:1", "--etcd-user", "u"], "--etcd-password-file"),
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str], needle: str) -> None:
    code, _, err = zt("config", "push", str(EXAMPLE), *args)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_unreachable_etcd_exits_1_naming_the_endpoint() -> None:
    code, _, err = zt("config", "get", "--etcd", "http://127.0.0.1:9")
    assert code == 1 and "127.0.0.1:9" in err


def test_push_over_tls_with_a_password(etcd_tls_auth: EtcdCluster, tmp_path: Path) -> None:
    assert etcd_tls_auth.tls is not None and etcd_tls_auth.root_password is not None
    secret = tmp_path / "root.password"
    secret.write_text(etcd_tls_auth.root_password + "\n")
    f = [*flags(etcd_tls_auth, prefix()), "--etcd-cacert", str(etcd_tls_auth.tls.ca)]
    code, _, err = zt("config", "push", str(EXAMPLE), *f, "--etcd-user", "root",
                      "--etcd-password-file", str(secret))  # fmt: skip
    assert code == 0, err
    secret.write_text("wrong\n")
    code, _, err = zt("config", "get", *f, "--etcd-user", "root", "--etcd-password-file",
                      str(secret))  # fmt: skip
    assert code != 0 and "root" in err


def test_two_concurrent_push_processes_exactly_one_wins(etcd1: EtcdCluster) -> None:
    """Both processes read the same revision: etcd is frozen (SIGSTOP) until both have sent
    their read, so their txns race for real."""
    p = prefix()
    f = flags(etcd1, p)
    assert zt("config", "push", str(EXAMPLE), *f)[0] == 0
    procs: list[subprocess.Popen[str]] = []
    try:
        outcomes = _race(etcd1, procs, f)
    finally:
        for proc in procs:  # only on failure are any still running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 3], outcomes
    loser = next(err for code, _, err in outcomes if code == 3)
    assert loser.startswith("zt: conflict: the mesh changed while this push was prepared (read at")
    assert "run `zt config diff` and push again" in loser
    _, out, _ = zt("config", "get", *f)
    winner = "pa" if outcomes[0][0] == 0 else "pb"
    doc = yaml.safe_load(out)
    assert {w["serviceAccount"] for w in doc["workloads"] if "serviceAccount" in w} >= {winner}


def _race(
    etcd1: EtcdCluster, procs: list[subprocess.Popen[str]], f: list[str]
) -> list[tuple[int, str, str]]:
    member = etcd1.members[0]
    etcd1.freeze(member)
    try:
        for name in ("pa", "pb"):
            proc = subprocess.Popen(
                [*ZT, "config", "push", "-", *f],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).parents[2],
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(TEXT.replace("frontend", name))
            proc.stdin.close()
        _wait_connected(procs, timeout=10.0)
    finally:
        etcd1.thaw(member)
    outcomes = []
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        proc.wait(timeout=15)
        outcomes.append((proc.returncode, proc.stdout.read(), proc.stderr.read()))
        proc.stdout.close()
        proc.stderr.close()
    return outcomes


def _wait_connected(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    """Until each process has a TCP connection open (its read is queued in the frozen etcd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_has_tcp(proc.pid) for proc in procs):
            time.sleep(0.2)  # the request itself follows the connect
            return
        for proc in procs:
            assert proc.poll() is None, proc.returncode
        time.sleep(0.02)
    raise AssertionError(f"push processes did not connect within {timeout} s")


def _has_tcp(pid: int) -> bool:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            inodes.add(str(target)[8:-1])
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[9] in inodes for line in table)


@pytest.mark.parametrize("command", ["check", "push"])
def test_stdin_that_is_not_utf8_is_a_config_error(command: str) -> None:
    flags = ["--etcd", "http://127.0.0.1:1"] if command == "push" else []
    result = runner.invoke(app, ["config", command, "-", *flags], input=b"workloads: \xff\n")
    assert result.exit_code == 2, result.output
    assert "<stdin>" in result.stderr and "UTF-8" in result.stderr
    assert "Traceback" not in result.output
