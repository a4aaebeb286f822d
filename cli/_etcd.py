"""The --etcd* flags shared by every command that talks to etcd (validated by zt/fleet/connect.py).

A command declares them with the annotations below and turns them into EtcdSettings:

    def push(..., etcd: EtcdOpt, etcd_cacert: CacertOpt = None, etcd_cert: CertOpt = None,
             etcd_key: KeyOpt = None, etcd_user: UserOpt = None,
             etcd_password_file: PasswordFileOpt = None, etcd_prefix: PrefixOpt = DEFAULT_PREFIX):
        settings = settings_from(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                 etcd_password_file, etcd_prefix)
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

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
    "settings_from",
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


def with_client(settings: "EtcdSettings", op: Callable[["EtcdClient"], Awaitable[T]]) -> T:
    """Run `op` with a client for `settings` on a fresh event loop; the client is closed after."""
    import asyncio  # noqa: PLC0415

    async def main() -> T:
        async with settings.client() as client:
            return await op(client)

    return asyncio.run(main())
