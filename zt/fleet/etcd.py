"""Async etcd v3 client over etcd's JSON gRPC gateway (httpx), with TLS, auth and endpoint failover.

Why the gateway and not a gRPC client: docs/fleet.md. Every call goes to the current endpoint; on a
connection error, a timeout or an "unavailable" answer (no leader) the client moves to the next
endpoint and retries there, trying each endpoint once per call before raising EtcdUnavailable with
every endpoint and its error. Reads, revision-guarded txns and our plain puts are safe to retry.

Auth is user/password -> token (the gateway cannot use client-certificate CNs). etcd's "simple"
tokens live in one member only, so tokens are kept per endpoint and a call that gets "invalid auth
token" (expired, or a member restarted) authenticates again once and retries.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from zt.fleet import etcdwatch
from zt.fleet.etcderrors import (
    REAUTH_ATTEMPTS,
    EtcdAuthFailed,
    EtcdError,
    EtcdRequestError,
    EtcdUnavailable,
    Reauth,
    Unreachable,
    classify,
    error_of,
    reauth_delay,
    reauth_refusal,
)
from zt.fleet.etcdwire import (
    Compare,
    Delete,
    KeyValue,
    Put,
    TxnResult,
    WatchBatch,
    WatchEvent,
    b64,
    decode_range,
    decode_txn,
    delete_request,
    header_revision,
    prefix_end,
    range_request,
    txn_request,
)

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "KeyValue",
    "Put",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "prefix_end",
]


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _ssl_context(cacert: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The client's TLS context; an unusable file is named (EtcdError), never an ssl/OS error."""
    try:
        ctx = ssl.create_default_context(cafile=str(cacert) if cacert else None)
    except (OSError, ssl.SSLError) as exc:
        raise EtcdError(
            f"etcd CA certificate {cacert}: {_describe(exc)}; expected a readable PEM CA file"
        ) from None
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise EtcdError(
                f"etcd client certificate {cert} / key {key}: {_describe(exc)}; expected a "
                "readable PEM certificate and its matching private key"
            ) from None
    return ctx


class EtcdClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cacert: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        first: int | None = None,
    ) -> None:
        """`first`: the index of the endpoint to try first; None picks one at random."""
        if not endpoints:
            raise EtcdUnavailable([])
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.user = user
        self._password = password
        self.timeout = timeout
        # a random first endpoint: a fleet's watches spread over the members instead of all
        # landing on the first one listed (docs/fleet.md)
        self._current = random.randrange(len(self.endpoints)) if first is None else first
        self._tokens: dict[str, str] = {}  # endpoint -> token ("" = auth was off there)
        self.http = httpx.AsyncClient(
            verify=_ssl_context(cacert, cert, key), timeout=httpx.Timeout(timeout), trust_env=False
        )

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    # --- endpoints and auth (also used by zt/fleet/etcdwatch.py) ------------------------------

    def endpoint_order(self) -> list[str]:
        """Every endpoint once, starting at the current one."""
        n = len(self.endpoints)
        return [self.endpoints[(self._current + i) % n] for i in range(n)]

    def mark_failed(self, endpoint: str) -> None:
        """Move past a failed endpoint (no-op when another call already moved on)."""
        if self.endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    def forget_token(self, endpoint: str) -> None:
        self._tokens.pop(endpoint, None)

    async def auth_headers(self, endpoint: str) -> dict[str, str]:
        if self.user is None:
            return {}
        token = self._tokens.get(endpoint)
        if token is None:
            token = await self._authenticate(endpoint)
            self._tokens[endpoint] = token
        return {"Authorization": token} if token else {}

    async def _authenticate(self, endpoint: str) -> str:
        body = {"name": self.user, "password": self._password or ""}
        doc, status = await self._post(endpoint, "/v3/auth/authenticate", body, {})
        if status == 200 and "error" not in doc:
            return str(doc.get("token") or "")
        code, message = error_of(doc, status)
        if "authentication is not enabled" in message:
            return ""
        err = classify(
            code, message, user=self.user, key=b"", operation="authenticate", endpoint=endpoint
        )
        if isinstance(err, Reauth):  # a refusal of the password itself: asking again won't help
            raise EtcdAuthFailed(self.user, message.removeprefix("etcdserver: "))
        raise err

    async def _post(
        self, endpoint: str, path: str, body: Mapping[str, object], headers: Mapping[str, str]
    ) -> tuple[dict[str, object], int]:
        try:
            resp = await self.http.post(endpoint + path, json=body, headers=headers)
        except (httpx.TransportError, ssl.SSLError) as exc:  # a member mid-start can fail TLS
            raise Unreachable(_describe(exc)) from exc
        try:
            doc = json.loads(resp.content)
        except ValueError as exc:
            raise Unreachable(f"HTTP {resp.status_code}, not JSON: {resp.text[:120]!r}") from exc
        if not isinstance(doc, dict):
            raise Unreachable(f"HTTP {resp.status_code}, unexpected body {resp.text[:120]!r}")
        return doc, resp.status_code

    async def _call_on(
        self, endpoint: str, path: str, body: Mapping[str, object], key: bytes, operation: str
    ) -> dict[str, object]:
        for attempt in range(REAUTH_ATTEMPTS):
            doc, status = await self._post(endpoint, path, body, await self.auth_headers(endpoint))
            if status == 200 and "error" not in doc:
                return doc
            code, message = error_of(doc, status)
            err = classify(
                code, message, user=self.user, key=key, operation=operation, endpoint=endpoint
            )
            if not isinstance(err, Reauth):
                raise err
            refusal = reauth_refusal(message, attempt, self.user)
            if refusal is not None:
                raise refusal
            # a stale token: another client changed etcd's users since we logged in
            self.forget_token(endpoint)
            await asyncio.sleep(reauth_delay(message, attempt, random.random()))
        raise AssertionError("unreachable")

    async def call(
        self, path: str, body: Mapping[str, object], *, key: bytes = b"", operation: str = "read"
    ) -> dict[str, object]:
        """POST one gateway request, failing over across endpoints."""
        failures: list[tuple[str, str]] = []
        for endpoint in self.endpoint_order():
            try:
                return await self._call_on(endpoint, path, body, key, operation)
            except Unreachable as exc:
                failures.append((endpoint, str(exc)))
                self.mark_failed(endpoint)
        raise EtcdUnavailable(failures)

    # --- key-value ----------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        keys_only: bool = False,
        limit: int = 0,
    ) -> tuple[list[KeyValue], int]:
        body = range_request(key, range_end, revision, keys_only, limit)
        return decode_range(await self.call("/v3/kv/range", body, key=key, operation="read"))

    async def put(self, key: bytes, value: bytes) -> int:
        body = {"key": b64(key), "value": b64(value)}
        return header_revision(await self.call("/v3/kv/put", body, key=key, operation="write"))

    async def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        body = delete_request(key, range_end)
        doc = await self.call("/v3/kv/deleterange", body, key=key, operation="delete")
        return header_revision(doc)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Put | Delete],
        failure: Sequence[Put | Delete] = (),
    ) -> TxnResult:
        body = txn_request(compare, success, failure)
        keys = [c.key for c in compare] + [o.key for o in (*success, *failure)]
        doc = await self.call("/v3/kv/txn", body, key=keys[0] if keys else b"", operation="txn")
        return decode_txn(doc)

    def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int,
        prev_kv: bool = False,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Batches of events from start_revision on (an async generator: `aclose()` it, or use
        contextlib.aclosing, to end the stream at once). Raises EtcdCompacted when start_revision was
        compacted, EtcdUnavailable when the stream breaks or its member stops answering (within
        ~3 s); the caller resumes from the last revision + 1 and the next call starts at the next
        endpoint."""
        return etcdwatch.watch(self, key, range_end, start_revision, prev_kv)

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision)}, operation="compact")

    async def status(self) -> dict[str, object]:
        """/v3/maintenance/status of the current endpoint (fails over like every call)."""
        return await self.call("/v3/maintenance/status", {}, operation="status")

    # --- auth admin (root only) ---------------------------------------------------------------

    async def _admin(self, path: str, body: Mapping[str, object], ok_if: str = "") -> None:
        try:
            await self.call(path, body, operation="administer auth")
        except EtcdRequestError as exc:
            if not ok_if or ok_if not in exc.message:
                raise

    async def user_add(self, name: str, password: str) -> None:
        """Idempotent: an existing user gets the new password."""
        try:
            await self.call("/v3/auth/user/add", {"name": name, "password": password})
        except EtcdRequestError as exc:
            if "already exists" not in exc.message:
                raise
            await self.call("/v3/auth/user/changepw", {"name": name, "password": password})

    async def user_delete(self, name: str) -> None:
        await self._admin("/v3/auth/user/delete", {"name": name}, ok_if="not found")

    async def role_add(self, name: str) -> None:
        await self._admin("/v3/auth/role/add", {"name": name}, ok_if="already exists")

    async def role_delete(self, name: str) -> None:
        await self._admin("/v3/auth/role/delete", {"role": name}, ok_if="not found")

    async def role_grant(
        self,
        role: str,
        key: bytes,
        range_end: bytes | None,
        perm: Literal["read", "write", "readwrite"],
    ) -> None:
        permission: dict[str, object] = {"permType": perm.upper(), "key": b64(key)}
        if range_end is not None:
            permission["range_end"] = b64(range_end)
        await self._admin("/v3/auth/role/grant", {"name": role, "perm": permission})

    async def user_grant_role(self, user: str, role: str) -> None:
        await self._admin("/v3/auth/user/grant", {"user": user, "role": role})

    async def auth_enable(self) -> None:
        """Idempotent. Needs the root user to exist with the root role."""
        await self._admin("/v3/auth/enable", {})
