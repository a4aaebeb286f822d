"""Presentation helpers shared by the sub-apps: how a zt error reaches the terminal."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from zt.errors import ZtError

P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a ZtError as `zt: <message>` on stderr and exit with the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ZtError as exc:
            typer.echo(f"zt: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper
