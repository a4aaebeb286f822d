"""The CLI's command tree, walked: what the surface and bad-input tests iterate over."""

from __future__ import annotations

from collections.abc import Iterator

import typer.main
from typer.core import TyperCommand

from cli.main import app


def commands() -> Iterator[tuple[str, TyperCommand]]:
    """Every leaf command as ("ca issue", its click command)."""

    def walk(cmd: object, path: list[str]) -> Iterator[tuple[str, TyperCommand]]:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            assert isinstance(cmd, TyperCommand)
            yield " ".join(path), cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])
