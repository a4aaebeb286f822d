"""The --etcd* flags shared by every command that talks to etcd (validated by zt/fleet/connect.py).

A command declares them with the annotations below and turns them into EtcdSettings:

    def push(..., etcd: EtcdOpt, etcd_cacert: CacertOpt = None, etcd_cert: CertOpt = None,
             etcd_key: KeyOpt = None, etcd_user: UserOpt = None,
             etcd_password_file: PasswordFileOpt = None, etcd_prefix: PrefixOpt = DEFAULT_PREFIX):
        settings = settings_from(etcd, etcd_cacert, etcd_cert, etcd_key, etcd_user,
                                 etcd_password_file, etcd_prefix)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from zt.fleet.connect import DEFAULT_PREFIX, EtcdSettings
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
        "--etcd", help="etcd client URLs, comma-separated (https://10.0.0.1:2379,https://...)"
    ),
]
CacertOpt = Annotated[
    Path | None, typer.Option("--etcd-cacert", help="CA certificate(s) that sign etcd's TLS cert")
]
CertOpt = Annotated[
    Path | None, typer.Option("--etcd-cert", help="client certificate for etcd's TLS (PEM)")
]
KeyOpt = Annotated[Path | None, typer.Option("--etcd-key", help="key of --etcd-cert (PEM)")]
UserOpt = Annotated[str | None, typer.Option("--etcd-user", help="etcd user name")]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--etcd-password-file", help="file whose first line is --etcd-user's password"),
]
PrefixOpt = Annotated[str, typer.Option("--etcd-prefix", help="key prefix of this fleet in etcd")]


def settings_from(
    etcd: str,
    cacert: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    user: str | None = None,
    password_file: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> EtcdSettings:
    """Validated settings from the flags (raises EtcdOptionError, a UsageError: exit 2)."""
    return EtcdSettings.from_options(
        etcd,
        cacert=cacert,
        cert=cert,
        key=key,
        user=user,
        password_file=password_file,
        prefix=prefix,
    )


def with_client(settings: EtcdSettings, op: Callable[[EtcdClient], Awaitable[T]]) -> T:
    """Run `op` with a client for `settings` on a fresh event loop; the client is closed after."""

    async def main() -> T:
        async with settings.client() as client:
            return await op(client)

    return asyncio.run(main())
