"""Presentation helpers shared by the sub-apps: how an error reaches the terminal, one line each.

Every user error ends as one line on stderr naming the flag, the value and what was expected, and
exit status 2: a ZtError raised by a command (`reports_errors`) and click's own usage errors (a
bad int, a missing option, an unknown flag), which click would print as a usage block (`ZtGroup`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
from typer._click import exceptions as click_errors
from typer._click.core import Context
from typer.core import TyperGroup

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


class OneLineError(click_errors.ClickException):
    """A click error shown as `zt <command>: <message>` (no usage block, no "Try --help")."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        typer.echo(self.message, err=True)


def one_line(exc: click_errors.ClickException, argv: list[str] | None = None) -> OneLineError:
    """The error as one line, in the form of zt's own (`zt: --flag: got ..., expected ...`),
    with a pointer to the command's help. `argv` (the command line) supplies the value of a
    bad option when click's message does not say it."""
    text = exc.format_message()
    if (
        isinstance(exc, click_errors.BadParameter)
        and not isinstance(exc, click_errors.MissingParameter)
        and exc.param_hint is None
        and exc.param is not None
    ):
        message = exc.message.removeprefix("Value error, ")
        given = _given(exc.param, argv or [])
        if given is not None and not message.startswith("got "):
            message = f"got {given!r}: {message}"
        text = f"{_name(exc.param)}: {message}"
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if isinstance(ctx, Context) else "zt"
    return OneLineError(f"zt: {' '.join(text.split())} (see `{where} --help`)", exc.exit_code)


def _name(param: Any) -> str:
    """`--flag` for an option, `FILE` for an argument."""
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    return "/".join(opts) if opts else str(param.metavar or param.name or "").upper()


def _given(param: Any, argv: list[str]) -> str | None:
    """The last value given to option `param` on the command line (None for an argument)."""
    value = None
    for i, arg in enumerate(argv):
        for opt in getattr(param, "opts", []):
            if arg == opt and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(f"{opt}="):
                value = arg[len(opt) + 1 :]
    return value


class ZtGroup(TyperGroup):
    """The root group: the whole command line is parsed and run under it, so every click error
    (of the root, a sub-app or a command) passes here and leaves as one line."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click_errors.NoArgsIsHelpError:
            raise  # `zt` alone prints the help: that is not an error line
        except click_errors.ClickException as exc:
            raise one_line(exc, args) from None

    def invoke(self, ctx: Context) -> Any:
        argv = [*ctx._protected_args, *ctx.args]  # what the sub-command will parse
        try:
            return super().invoke(ctx)
        except (click_errors.NoArgsIsHelpError, OneLineError):
            raise
        except click_errors.ClickException as exc:
            raise one_line(exc, argv) from None


def sub_app(help_text: str) -> typer.Typer:
    """A sub-app: plain help (no rich markup, so `[::1]:15008` shows as written), help when run
    without a command, one-line errors also when it is run on its own (as tests do)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None, cls=ZtGroup)
