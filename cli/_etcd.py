"""The --etcd* flags shared by every command that talks to etcd (validated by zt/fleet/connect.py).

A command that takes all seven gets them from `etcd_flags`, as one EtcdSettings:

    @etcd_flags()
    def push(file: FileArg, settings: "EtcdSettings") -> None: ...

A command that takes a few (`zt node join`) declares them with the annotations below.
"""

import functools
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from . import _values
from ._defaults import ETCD_PREFIX as DEFAULT_PREFIX

if TYPE_CHECKING:  # imported by the functions that need them: `zt --help` loads neither
    from zt.fleet.connect import EtcdSettings
    from zt.fleet.etcd import EtcdClient

T = TypeVar("T")

__all__ = [
    "DEFAULT_PREFIX",
    "CacertOpt",
    "CertOpt",
    "EtcdOpt",
    "KeyOpt",
    "PasswordFileOpt",
    "PrefixOpt",
    "UserOpt",
    "etcd_flags",
    "settings_from",
    "with_client",
]

EtcdOpt = Annotated[
    str,
    typer.Option(
        "--etcd",
        help="etcd client URLs, comma-separated (https://10.0.0.1:2379,https://...)",
        parser=_values.etcd_urls,
    ),
]
CacertOpt = Annotated[
    Path | None,
    typer.Option(
        "--etcd-cacert",
        help="CA certificate(s) that sign etcd's TLS cert",
        exists=True,
        dir_okay=False,
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option(
        "--etcd-cert", help="client certificate for etcd's TLS (PEM)", exists=True, dir_okay=False
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--etcd-key", help="key of --etcd-cert (PEM)", exists=True, dir_okay=False),
]
UserOpt = Annotated[
    str | None, typer.Option("--etcd-user", help="etcd user name", parser=_values.etcd_user)
]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--etcd-password-file",
        help="file whose first line is --etcd-user's password",
        exists=True,
        dir_okay=False,
    ),
]
PrefixOpt = Annotated[
    str,
    typer.Option(
        "--etcd-prefix", help="key prefix of this fleet in etcd", parser=_values.etcd_prefix
    ),
]


def settings_from(
    etcd: str,
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> "EtcdSettings":
    """Validated settings from the flags (raises EtcdOptionError, a UsageError: exit 2)."""
    from zt.fleet.connect import EtcdSettings  # noqa: PLC0415

    return EtcdSettings.from_options(
        etcd,
        cacert=cacert,
        cert=cert,
        key=key,
        user=user,
        password_file=password_file,
        prefix=prefix,
    )


SettingsOf = Callable[
    [str, Path | None, Path | None, Path | None, str | None, Path | None, str], "EtcdSettings"
]


def _flags(etcd_help: str | None) -> list[inspect.Parameter]:
    """The seven flags as keyword-only parameters; with `etcd_help`, --etcd is optional."""
    kw = inspect.Parameter.KEYWORD_ONLY
    etcd: inspect.Parameter = inspect.Parameter("etcd", kw, annotation=EtcdOpt)
    if etcd_help is not None:
        option = typer.Option("--etcd", help=etcd_help, parser=_values.etcd_urls)
        etcd = inspect.Parameter("etcd", kw, annotation=Annotated[str | None, option], default=None)
    return [
        etcd,
        *(
            inspect.Parameter(name, kw, annotation=opt, default=None)
            for name, opt in (
                ("etcd_cacert", CacertOpt),
                ("etcd_cert", CertOpt),
                ("etcd_key", KeyOpt),
                ("etcd_user", UserOpt),
                ("etcd_password_file", PasswordFileOpt),
            )
        ),
        inspect.Parameter("etcd_prefix", kw, annotation=PrefixOpt, default=DEFAULT_PREFIX),
    ]


def etcd_flags(
    settings_of: SettingsOf | None = None, *, etcd_help: str | None = None
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give a command the seven --etcd* flags; it receives them as `settings` (EtcdSettings, made
    by `settings_of`, settings_from by default), or None when --etcd is optional (`etcd_help`) and
    not given. Typer reads the command's parameters from its signature, which this extends."""

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        flags = _flags(etcd_help)
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> T:
            given = [kwargs.pop(p.name) for p in flags]
            make = settings_of or settings_from
            kwargs["settings"] = None if given[0] is None else make(*given)
            return command(*args, **kwargs)

        run.__signature__ = inspect.Signature([*own, *flags])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in (*own, *flags)}
        return run

    return decorate


def with_client(settings: "EtcdSettings", op: Callable[["EtcdClient"], Awaitable[T]]) -> T:
    """Run `op` with a client for `settings` on a fresh event loop; the client is closed after."""
    import asyncio  # noqa: PLC0415

    async def main() -> T:
        async with settings.client() as client:
            return await op(client)

    return asyncio.run(main())
