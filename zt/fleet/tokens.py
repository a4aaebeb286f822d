"""Join tokens: `ztjoin-<id>.<secret>`, one node, one use, a deadline (pure; docs/fleet.md).

The id names the etcd user `zt-join-<id>` and the keys {p}/join/<id>/ and {p}/tokens/<id>; the secret
is that user's etcd password, so a token is exactly the credential that lets one node ask to join.
The token record keeps only the secret's SHA-256 (a leaked etcd snapshot does not leak tokens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from zt.errors import UsageError
from zt.fleet.csr import Refuse

PREFIX = "ztjoin-"
_TOKEN = re.compile(r"ztjoin-([0-9a-f]{8})\.([A-Za-z0-9_-]{43})")


class BadToken(UsageError):
    reason = "bad_token"


@dataclass(frozen=True)
class Token:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.id}.{self.secret}"

    @property
    def user(self) -> str:
        return join_user(self.id)

    @classmethod
    def new(cls) -> Token:
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        return cls(secrets.token_hex(4), secret)

    @classmethod
    def parse(cls, text: str) -> Token:
        m = _TOKEN.fullmatch(text.strip())
        if m is None:
            raise BadToken(
                "--token: got a value that is not a join token, expected "
                "ztjoin-<8 hex>.<43 base64url chars> as `zt ca token create` prints it"
            )
        return cls(m.group(1), m.group(2))


def join_user(token_id: str) -> str:
    return f"zt-join-{token_id}"


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """{p}/tokens/<id>."""

    node: str
    expires: float
    secret_sha256: str
    used_at: float | None = None

    def to_json(self) -> bytes:
        doc = {
            "node": self.node,
            "expires": self.expires,
            "secret_sha256": self.secret_sha256,
            "used_at": self.used_at,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TokenRecord | None:
        """None for a record that does not parse (it then counts as unknown)."""
        try:
            d = json.loads(data)
            used = d.get("used_at")
            return cls(
                str(d["node"]),
                float(d["expires"]),
                str(d["secret_sha256"]),
                None if used is None else float(used),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def check(record: TokenRecord | None, token_id: str, node: str, now: float) -> Refuse | None:
    """Whether this join request may go on; a refusal names what to do instead."""
    tok = f"{PREFIX}{token_id}"
    if record is None:
        return Refuse(
            "token_unknown",
            f"token {tok} is unknown to the CA; create one with `zt ca token create`",
        )
    if record.used_at is not None:
        return Refuse(
            "token_used",
            f"token {tok} was already used at {record.used_at:.0f}; tokens are single-use: "
            f"create a new one with `zt ca token create --node {node}`",
        )
    if now >= record.expires:
        return Refuse(
            "token_expired",
            f"token {tok} expired at {record.expires:.0f}; create a new one with "
            f"`zt ca token create --node {node}`",
        )
    if record.node != node:
        return Refuse(
            "token_foreign_node",
            f"token {tok} was created for node {record.node!r}, not {node!r}; use that node "
            f"name or create a token with `zt ca token create --node {node}`",
        )
    return None
