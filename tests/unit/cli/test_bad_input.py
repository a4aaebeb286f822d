"""Every option of every command, fed a bad value: exit 2, one line naming the option, no traceback.

The click command tree is walked, so a new option without an entry in BAD (or FREE, with the
reason it accepts any text) fails here. The required options of each command get valid values
(BASE) that would still fail harmlessly if a bad value slipped through: closed ports, empty
directories, files that are not certificates. In-process (CliRunner), nothing is started.
"""

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner

from cli.main import app
from tests.unit.cli.tree import commands

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "mesh.yaml")
LOCALHOST = ROOT / "tests" / "data" / "ztunnel-localhost.yaml"
TOKEN = "ztjoin-0123abcd." + "A" * 43
ETCD = ["--etcd", "https://127.0.0.1:9"]  # discard port: nothing listens


@pytest.fixture(autouse=True)
def _one_command_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner rebuilds the click tree from the typer app on each invoke (~30 ms here): build
    it once for the 200-odd invocations below."""
    monkeypatch.setattr(typer.testing, "_get_command", functools.cache(typer.main.get_command))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad-input")
    (d / "file").write_text("not a certificate\n")
    (d / "dir").mkdir()
    return {"file": str(d / "file"), "dir": str(d / "dir"), "new": str(d / "new" / "x")}


def _base(p: dict[str, str]) -> dict[str, list[str]]:
    """Valid values for each command's required parameters."""
    pem = ["--cert", p["file"], "--key", p["file"], "--bundle", p["file"]]
    out = str(Path(p["dir"]) / "x")
    return {
        "run": ["--node", "n1", "--config", EXAMPLE, "--ca-dir", p["dir"]],
        "route": ["--config", EXAMPLE, "--src", "default/pod-a1", "--dst", "10.96.0.10:80"],
        "pod add": ["uid1", "--netns", "pod1", "--pod-socket", p["file"]],
        "pod remove": ["uid1", "--pod-socket", p["file"]],
        "pod list": ["--pod-socket", p["file"]],
        "config check": [EXAMPLE],
        "config dump": [EXAMPLE],
        "config import": [str(LOCALHOST)],
        "config export": [EXAMPLE],
        "config push": [EXAMPLE, *ETCD],
        "config get": ETCD,
        "config diff": [EXAMPLE, *ETCD],
        "authz check": ["--config", EXAMPLE, "--src-ip", "10.1.0.2", "--dst", "10.2.0.2:8080"],
        "ca init": ["--ca-dir", p["new"]],
        "ca serve": ["--ca-dir", p["dir"], *ETCD],
        "ca rotate": ["--ca-dir", p["dir"], *ETCD],
        "ca issue": ["--spiffe", "spiffe://td/ns/a/sa/b", "--out", out, "--ca-dir", p["dir"]],
        "ca show": ["--ca-dir", p["dir"]],
        "ca token create": ["--node", "n1", *ETCD],
        "node join": [*ETCD, "--token", TOKEN, "--node", "n1", "--state-dir", p["new"]],
        "node show": ["--state-dir", p["dir"]],
        "capture status": ["--pin-dir", p["dir"]],
        "capture remove": ["--pin-dir", p["dir"]],
        "hbone serve": ["--listen", "127.0.0.1:0", *pem],
        "hbone connect": [
            *("--via", "127.0.0.1:9", "--authority", "127.0.0.1:9", *pem),
            *("--expect-san", "spiffe://td/ns/a/sa/b"),
        ],
        "lab up": [],
        "lab down": [],
        "lab status": [],
        "lab exec": ["pod1-1"],
        "lab demo": [],
        "lab config get": [],
        "lab config push": [EXAMPLE],
        "bench node": [],  # every bad value below is refused before anything is built
        "bench dns": [],  # only flags: nothing to feed a bad value
    }


def _bad(p: dict[str, str]) -> dict[str, list[str]]:
    """Bad values by parameter (option flag, or an argument's name)."""
    not_a_file, not_a_dir, missing = p["dir"], p["file"], p["new"]
    addr = ["fd00::1:80", "localhost:80", "10.0.0.1"]
    pem = [not_a_file, missing]
    return {
        "--node": ["bad/name", ""],
        "--config": [not_a_file],
        "--etcd": ["127.0.0.1:2379", "https://10.0.0.1:2379/path"],
        "--state-dir": [not_a_dir],
        "--etcd-cacert": [not_a_file],
        "--etcd-cert": [not_a_file],
        "--etcd-key": [not_a_file],
        "--etcd-password-file": [not_a_file],
        "--etcd-user": [""],
        "--etcd-prefix": ["zt", "/a//b"],
        "--ca-dir": [not_a_dir],
        "--trust-domain": ["Bad_Domain!"],
        "--capture": ["iptables"],
        "--pin-dir": [not_a_dir],
        "--pod-socket": [not_a_file],
        "--metrics-addr": addr,
        "--readiness-addr": addr,
        "--admin-addr": addr,
        "--log-format": ["xml"],
        "--ktls": ["yes"],
        "--format": ["yaml"],
        "--dns-upstream": ["dns.example", "10.0.0.1:0", "[fe80::1"],
        "--drain-deadline": ["-1", "soon"],
        "--handshake-timeout": ["0", "x"],
        "--pod-grace": ["-1"],
        "--workers": ["0", "65", "two"],
        "--src": ["nope", ""],
        "--dst": addr,
        "--seed": ["x"],
        "UID": ["", "a\nb"],
        "--netns": ["../x", "", "a/b"],
        "FILE": [missing, not_a_file],
        "--src-ip": ["10.0.0.300", "10.0.0.1:80"],
        "--src-identity": ["cluster.local/ns/a/sa/b", "spiffe://td/ns/a"],
        "--cert": pem,
        "--key": pem,
        "--bundle": [not_a_file],
        "--leaf-lifetime": ["10m", "soon"],
        "--switch-after": ["soon", "-5s"],
        "--retire-after": ["soon"],
        "--ttl": ["0", "soon"],
        "--spiffe": ["spiffe://x/a", "cluster.local/ns/a/sa/b"],
        "--out": [str(Path(missing).parent / "nodir" / "x"), not_a_file + "/"],
        "--lifetime": ["soon", "0"],
        "--token": ["not-a-token"],
        "--timeout": ["soon"],
        "--listen": ["localhost:8080", "10.0.0.1"],
        "--via": addr,
        "--authority": ["fd00::1:80", "10.0.0.1", "host:0"],  # hostname:port is one
        "--expect-san": ["cluster.local/ns/a/sa/b"],
        "--allow": ["10.0.0.0/33", "10.0.0.0/8:99999"],
        "--drain": ["-1"],
        "--nodes": ["0", "10"],
        "--pods": ["0", "51"],
        "--control": ["k8s"],
        "--name": ["bad_name!", "x" * 13],
        "POD": ["Pod1/../x"],
        "--reps": ["0", "x"],
        "--envoy": [not_a_file, missing],
        "--variant": ["before", f"before={p['dir']}"],
    }


# Values an error line must not repeat (they may be secrets mistyped into the wrong place).
SECRET = {"not-a-token"}

# Options that take any text: their values have no wrong form.
FREE = {
    "--network": "a network name; empty is the default network",
}


def _name(param: object) -> str:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    return opts[0] if opts else str(getattr(param, "name", "")).upper()


def _replace(base: list[str], flag: str, value: str, positional: bool) -> list[str]:
    """BASE with `flag`'s value (or the positional argument) swapped for `value`."""
    if positional:
        first = next((i for i, a in enumerate(base) if not a.startswith("-")), None)
        if first == 0:
            return [value, *base[1:]]
        return [value, *base]
    if flag in base:
        i = base.index(flag)
        return [*base[:i], flag, value, *base[i + 2 :]]
    return [*base, flag, value]


def _cases(p: dict[str, str]) -> Iterator[tuple[str, str, str, list[str]]]:
    base, bad = _base(p), _bad(p)
    for path, cmd in commands():
        assert path in base, f"{path}: add its required values to _base"
        for param in cmd.params:
            name = _name(param)
            if getattr(param, "is_flag", False) or name in FREE or name == "--help":
                continue
            assert name in bad, f"zt {path} {name}: add bad values for it to _bad (or to FREE)"
            positional = not name.startswith("-")
            for value in bad[name]:
                argv = _replace(base[path], name, value, positional)
                yield path, name, value, [*path.split(), *argv]


def test_every_option_rejects_bad_values_in_one_line(paths: dict[str, str]) -> None:
    runner = CliRunner()
    problems: list[str] = []
    count = 0
    for _, name, value, argv in _cases(paths):
        count += 1
        result = runner.invoke(app, argv)
        lines = (result.stdout + result.stderr).strip().splitlines()
        text = "\n".join(lines)
        ok = (
            result.exit_code == 2
            and len(lines) == 1
            and name in lines[0]
            and (repr(value) in lines[0] or value in SECRET)  # the value, quoted
            and lines[0].startswith("zt: ")
            and "Traceback" not in text
        )
        if not ok:
            problems.append(f"zt {' '.join(argv)}\n  -> exit {result.exit_code}: {text!r}")
    assert count > 150
    assert not problems, f"{len(problems)} of {count} bad values:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["ca", "issue"], "--spiffe"),  # a required option missing
        (["route", "--bogus"], "--bogus"),  # an unknown option
        (["no-such-command"], "no-such-command"),
        (["hbone", "serve", "--listen"], "--listen"),  # an option without its value
        (["config", "check", EXAMPLE, "extra"], "extra"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], named: str) -> None:
    result = CliRunner().invoke(app, argv)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2
    assert len(lines) == 1 and lines[0].startswith("zt: ") and named in lines[0], lines
    assert result.stdout == ""


def test_no_arguments_still_prints_help() -> None:
    result = CliRunner().invoke(app, ["ca"])
    assert "Usage:" in result.output and "init" in result.output
