"""How a command reaches etcd: the validated --etcd* flags as one frozen EtcdSettings.

Pure apart from reading the files the flags name. The typer annotations of the flags live in
cli/_etcd.py (so zt/ stays free of typer); node commands build EtcdSettings from their state dir
(zt/fleet/nodestate.py) instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from zt.errors import UsageError
from zt.fleet import keys
from zt.fleet.etcd import EtcdClient
from zt.fleet.keys import DEFAULT_PREFIX

__all__ = [
    "DEFAULT_PREFIX",
    "EtcdOptionError",
    "EtcdSettings",
    "parse_endpoints",
    "parse_prefix",
    "read_password_file",
]

MAX_PASSWORD_BYTES = 4096


class EtcdOptionError(UsageError):
    """An --etcd* flag's value cannot be used; the message names the flag."""

    reason = "bad_etcd_option"

    def __init__(self, flag: str, value: object, expected: str) -> None:
        self.flag = flag
        self.value = value
        super().__init__(f"{flag}: got {value!r}, expected {expected}")


def parse_endpoints(text: str, flag: str = "--etcd") -> tuple[str, ...]:
    """Comma-separated http(s)://host:port URLs, one scheme for all."""
    endpoints = tuple(e.strip().rstrip("/") for e in text.split(",") if e.strip())
    expected = "comma-separated etcd client URLs such as https://10.0.0.1:2379"
    if not endpoints:
        raise EtcdOptionError(flag, text, expected)
    for url in endpoints:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise EtcdOptionError(flag, url, expected) from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise EtcdOptionError(flag, url, expected)
        if parts.path or parts.query or parts.fragment or parts.username:
            raise EtcdOptionError(flag, url, f"{expected} (no path, query or user)")
    if len({urlsplit(e).scheme for e in endpoints}) > 1:
        raise EtcdOptionError(flag, text, "URLs of one scheme (all https:// or all http://)")
    return endpoints


def parse_prefix(text: str, flag: str = "--etcd-prefix") -> str:
    """A key prefix such as /zt (a trailing '/' dropped), by the key layout's own rule."""
    try:
        return keys.check_prefix(text.rstrip("/"))
    except keys.BadKeyPrefix:
        expected = "a key prefix such as /zt (starts with /, printable, no space or empty segment)"
        raise EtcdOptionError(flag, text, expected) from None


def read_password_file(path: Path, flag: str = "--etcd-password-file") -> str:
    """The password: the file's first line, without surrounding whitespace."""
    try:
        data = path.read_bytes()[: MAX_PASSWORD_BYTES + 1]
    except OSError as exc:
        raise EtcdOptionError(flag, str(path), f"a readable file ({exc.strerror})") from None
    if len(data) > MAX_PASSWORD_BYTES:
        raise EtcdOptionError(flag, str(path), f"a password file under {MAX_PASSWORD_BYTES} bytes")
    try:
        lines = data.decode("utf-8").strip().splitlines()
    except UnicodeDecodeError:
        raise EtcdOptionError(flag, str(path), "a UTF-8 text file") from None
    if not lines or not lines[0].strip():
        raise EtcdOptionError(flag, str(path), "a file holding the password (it is empty)")
    return lines[0].strip()


def _readable(path: Path | None, flag: str) -> Path | None:
    if path is not None and not path.is_file():
        raise EtcdOptionError(flag, str(path), "an existing PEM file")
    return path


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...]
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    timeout: float = 5.0

    @classmethod
    def from_options(
        cls,
        etcd: str,
        *,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        user: str | None = None,
        password_file: Path | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> EtcdSettings:
        """Validate the --etcd* flags; every error is one line naming its flag."""
        endpoints = parse_endpoints(etcd)
        plain = endpoints[0].startswith("http://")
        for flag, path in (("--etcd-cacert", cacert), ("--etcd-cert", cert), ("--etcd-key", key)):
            _readable(path, flag)
            if plain and path is not None:
                raise EtcdOptionError("--etcd", etcd, f"https:// URLs when {flag} is given")
        if (cert is None) != (key is None):
            flag, value = ("--etcd-key", key) if cert is not None else ("--etcd-cert", cert)
            raise EtcdOptionError(flag, value, "--etcd-cert and --etcd-key given together")
        if user is not None and not user.strip():
            raise EtcdOptionError("--etcd-user", user, "a user name")
        if (user is None) != (password_file is None):
            if user is None:
                raise EtcdOptionError("--etcd-user", None, "a user name with --etcd-password-file")
            raise EtcdOptionError("--etcd-password-file", None, f"the password of user {user!r}")
        password = read_password_file(password_file) if password_file is not None else None
        return cls(endpoints, cacert, cert, key, user, password, parse_prefix(prefix))

    def client(self) -> EtcdClient:
        return EtcdClient(
            self.endpoints,
            cacert=self.cacert,
            cert=self.cert,
            key=self.key,
            user=self.user,
            password=self.password,
            timeout=self.timeout,
        )
