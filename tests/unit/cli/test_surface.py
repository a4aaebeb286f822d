"""The CLI's surface across every command: help as written, an example each, one flag name per
concept, `--json` wherever data is printed, the help defaults equal to their owners' values."""

import functools
from pathlib import Path

import pytest
import typer.main
import typer.testing
from typer.core import TyperCommand
from typer.testing import CliRunner

from cli import _defaults
from cli.main import app
from tests.unit.cli.tree import commands
from zt.capture.capture import DEFAULT_PIN_DIR
from zt.fleet.keys import DEFAULT_PREFIX
from zt.fleet.nodestate import DEFAULT_DIR as NODE_STATE_DIR
from zt.identity.ca import DEFAULT_DIR, DEFAULT_LEAF_LIFETIME, DEFAULT_TRUST_DOMAIN
from zt.node.options import DEFAULT_STATE_DIR, MAX_WORKERS
from zt.node.podapi import DEFAULT_SOCKET
from zt.node.reconcile import DEFAULT_GRACE
from zt.proxy.accept import DEFAULT_LIMITS
from zt.state.loopguard import ALLOW_FORM

# Commands whose output is data (a document, a record, a table): each takes --json. The others
# print one confirmation line (ca init, node join, config push ...), a path list (ca issue), a
# diff (config diff) or a token (ca token create).
DATA_COMMANDS = {
    "route", "pod add", "pod remove", "pod list", "config dump", "config get", "authz check",
    "ca show", "node show", "capture status", "lab up", "lab status", "lab config get",
    "bench node",
}  # fmt: skip

# One spelling per concept; the others must not come back.
RETIRED = {
    "--dir": "--ca-dir",
    "--socket": "--pod-socket",
    "--ca": "--bundle",
    "--output": "--json",
}


@pytest.fixture(autouse=True)
def _one_command_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typer.testing, "_get_command", functools.cache(typer.main.get_command))


def _help(path: str) -> str:
    result = CliRunner().invoke(app, [*path.split(), "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_ipv6_addresses_in_help_keep_their_brackets() -> None:
    assert "[::1]:15008" in _help("hbone serve")
    assert "[IPV6]:PORT" in _help("hbone connect")
    assert "[::]:15020" in _help("run")  # a default, shown as written


def test_every_command_has_an_example() -> None:
    missing = []
    for path, _ in commands():
        text = _help(path)
        example = text.split("Example:", 1)[-1] if "Example:" in text else ""
        if f"zt {path}" not in example:
            missing.append(path)
    assert not missing, f"no `Example:` with `zt <command>` in the help of: {missing}"


def test_one_flag_name_per_concept() -> None:
    spellings: dict[str, set[str]] = {}
    for path, cmd in commands():
        for param in cmd.params:
            opts = [o for o in param.opts if o.startswith("-")]
            if opts:
                spellings.setdefault(str(param.name), set()).add("/".join(opts))
            for old, new in RETIRED.items():
                assert old not in opts, f"zt {path} {old}: the flag is spelled {new}"
    several = {name: flags for name, flags in spellings.items() if len(flags) > 1}
    assert not several, f"one concept, several flags: {several}"
    assert spellings["ca_dir"] == {"--ca-dir"}
    assert spellings["pod_socket"] == {"--pod-socket"}
    assert spellings["state_dir"] == {"--state-dir"}
    assert spellings["as_json"] == {"--json"}
    assert spellings["bundle"] == {"--bundle"}


def test_every_command_that_prints_data_takes_json() -> None:
    tree = dict(commands())
    assert tree.keys() >= DATA_COMMANDS
    without = [p for p in sorted(DATA_COMMANDS) if "--json" not in _opts(tree[p])]
    assert not without, f"no --json: {without}"


def _opts(cmd: TyperCommand) -> set[str]:
    return {o for p in cmd.params for o in p.opts}


def test_help_defaults_are_the_owners_values() -> None:
    assert _defaults.CA_DIR == DEFAULT_DIR
    assert _defaults.TRUST_DOMAIN == DEFAULT_TRUST_DOMAIN
    assert _defaults.LEAF_LIFETIME == DEFAULT_LEAF_LIFETIME
    assert _defaults.STATE_DIR == DEFAULT_STATE_DIR == NODE_STATE_DIR
    assert _defaults.ETCD_PREFIX == DEFAULT_PREFIX
    assert _defaults.PIN_DIR == DEFAULT_PIN_DIR
    assert _defaults.POD_SOCKET == DEFAULT_SOCKET
    assert DEFAULT_LIMITS.handshake_timeout == _defaults.HANDSHAKE_TIMEOUT
    assert _defaults.POD_GRACE == DEFAULT_GRACE
    assert _defaults.MAX_WORKERS == MAX_WORKERS
    assert _defaults.ALLOW_FORM == ALLOW_FORM


def test_route_prints_text_and_json() -> None:
    example = str(Path(__file__).resolve().parents[3] / "examples" / "mesh.yaml")
    args = ["route", "--config", example, "--src", "default/pod-a1", "--dst", "10.2.0.10:5432"]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "kind: tcp" in text.stdout.splitlines()
    doc = CliRunner().invoke(app, [*args, "--json"])
    assert doc.exit_code == 0 and '"kind": "tcp"' in doc.stdout
