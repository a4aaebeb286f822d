"""Entry point of the `zt` console script: mounts one typer sub-app per room."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="zt",
    help="zt: a node proxy for sidecar-less service meshes (BPF capture, HBONE, L4 policy).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module under cli/, command name). Each module exposes `app` (a typer.Typer) or, for a single
# command, `command` (a function registered as a top-level command).
_SUBAPPS: tuple[tuple[str, str], ...] = (
    ("config_cmd", "config"),
    ("authz_cmd", "authz"),
    ("ca_cmd", "ca"),
    ("hbone_cmd", "hbone"),
    ("capture_cmd", "capture"),
    ("pod_cmd", "pod"),
    ("lab_cmd", "lab"),
)
_COMMANDS: tuple[tuple[str, str], ...] = (("route_cmd", "route"), ("run_cmd", "run"))


def _mount() -> None:
    for module_name, name in _SUBAPPS:
        try:
            module = importlib.import_module(f"cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cli.{module_name}":
                continue  # that room has not landed its CLI yet
            raise
        app.add_typer(module.app, name=name)
    for module_name, name in _COMMANDS:
        module = importlib.import_module(f"cli.{module_name}")
        app.command(name)(module.command)


_mount()


def main() -> None:
    app()
