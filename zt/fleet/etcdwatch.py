"""One etcd watch over the JSON gateway: a streaming POST to /v3/watch whose body is a create
request and whose response is newline-separated JSON documents ({"result": {...}}).

A stream whose member is SIGKILLed ends at once, but one whose member is frozen (SIGSTOP, a cut
link) just goes quiet. The watch asks for progress notifications, which zt's members send every
second (`--experimental-watch-progress-notify-interval`, zt/fleet/etcdserver.py), so a healthy
stream is never quiet for long. Only a stream quiet for QUIET_S gets a heartbeat: a status request
to the SAME endpoint; HEARTBEAT_MISSES misses in a row (each HEARTBEAT_TIMEOUT_S, asked back to
back) end the watch with EtcdUnavailable, about 3 s after the member stopped. Any HTTP answer
counts as alive: a member that lost its leader still delivers what it has. Probing only quiet
streams matters at fleet scale: a probe every 0.5 s per node cost etcd ~1.2 ms of CPU each
(docs/fleet.md), 2.3 cores at 1,000 nodes; members without the progress flag still get probed.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import AsyncGenerator
from typing import Protocol

import httpx

from zt.fleet.etcderrors import (
    REAUTH_ATTEMPTS,
    EtcdAuthFailed,
    EtcdCompacted,
    EtcdUnavailable,
    Reauth,
    Unreachable,
    classify,
    reauth_delay,
    reauth_refusal,
)
from zt.fleet.etcdwire import WatchBatch, WatchResponse, decode_watch, watch_request


class WatchingClient(Protocol):
    """What a watch needs of zt/fleet/etcd.py's client: its HTTP client, endpoints and tokens
    (a protocol, so this module does not import the client that imports it)."""

    http: httpx.AsyncClient
    timeout: float
    user: str | None

    def endpoint_order(self) -> list[str]: ...
    def mark_failed(self, endpoint: str) -> None: ...
    def forget_token(self, endpoint: str) -> None: ...
    async def auth_headers(self, endpoint: str) -> dict[str, str]: ...


HEARTBEAT_S = 0.25  # how often the heartbeat looks at the stream
QUIET_S = 1.25  # a stream silent this long is probed (progress notifications come every 1 s)
HEARTBEAT_TIMEOUT_S = 0.75
HEARTBEAT_MISSES = 2


class _StreamBroken(Exception):
    """Internal: the stream or its endpoint failed; carries why."""


_END = object()  # the stream ended (EOF)


class _Seen:
    """When the stream last delivered anything (monotonic): the heartbeat probes only after
    QUIET_S of silence."""

    def __init__(self) -> None:
        self.at = time.monotonic()


async def _read(
    client: WatchingClient,
    endpoint: str,
    body: dict[str, object],
    out: asyncio.Queue[object],
    seen: _Seen,
) -> None:
    """Reader task: every line of the stream into `out`, then _END or the exception."""
    try:
        headers = await client.auth_headers(endpoint)
        timeout = httpx.Timeout(client.timeout, read=None)  # a quiet watch is not a dead one
        async with client.http.stream(
            "POST", endpoint + "/v3/watch", json=body, headers=headers, timeout=timeout
        ) as resp:
            async for line in resp.aiter_lines():
                seen.at = time.monotonic()
                if line.strip():
                    await out.put(line)
        await out.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # handed to the consumer, which translates it
        await out.put(exc)


async def _heartbeat(
    client: WatchingClient, endpoint: str, out: asyncio.Queue[object], seen: _Seen
) -> None:
    misses = 0
    while True:
        if misses == 0:  # after a miss, ask again at once
            await asyncio.sleep(HEARTBEAT_S)
            if time.monotonic() - seen.at < QUIET_S:
                continue
        # every failure counts as a miss: a heartbeat task that died of an unexpected one would
        # leave a frozen member's stream waiting forever
        try:
            await client.http.post(
                endpoint + "/v3/maintenance/status", json={}, timeout=HEARTBEAT_TIMEOUT_S
            )
            misses = 0
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            misses += 1
            if misses >= HEARTBEAT_MISSES:
                why = f"no answer to {misses} heartbeats ({type(exc).__name__})"
                await out.put(_StreamBroken(why))
                return


def _next(item: object) -> WatchResponse:
    """A queue item as a decoded response, or the failure it stands for."""
    if item is _END:
        raise _StreamBroken("watch stream ended")
    if isinstance(item, _StreamBroken | EtcdAuthFailed | EtcdUnavailable):
        raise item
    if isinstance(item, Exception):
        raise _StreamBroken(f"{type(item).__name__}: {item}") from item
    try:
        doc = json.loads(str(item))
    except ValueError:
        raise _StreamBroken(f"not a JSON line: {str(item)[:120]!r}") from None
    if not isinstance(doc, dict):
        raise _StreamBroken(f"not a JSON object: {str(item)[:120]!r}")
    if "error" in doc:  # the gateway ends a stream it cannot serve with one error document
        error = doc["error"]
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        raise _StreamBroken(f"etcd: {message}")
    return decode_watch(doc)


def _check(resp: WatchResponse, client: WatchingClient, key: bytes, endpoint: str) -> None:
    if resp.compact_revision > 0:
        raise EtcdCompacted(resp.compact_revision)
    if resp.canceled:
        reason = resp.cancel_reason.rpartition("desc = ")[2] or "watch canceled"
        raise classify(0, reason, user=client.user, key=key, operation="watch", endpoint=endpoint)


class _Stream:
    """One open stream + heartbeat on one endpoint."""

    def __init__(self, client: WatchingClient, endpoint: str, body: dict[str, object]) -> None:
        self.endpoint = endpoint
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        seen = _Seen()
        self.tasks = (
            asyncio.create_task(_read(client, endpoint, body, self.queue, seen)),
            asyncio.create_task(_heartbeat(client, endpoint, self.queue, seen)),
        )

    async def get(self, timeout: float | None = None) -> WatchResponse:
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise _StreamBroken(f"no watch response within {timeout} s") from None
        return _next(item)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _open(client: WatchingClient, key: bytes, body: dict[str, object]) -> _Stream:
    """A stream whose "created" ack arrived, trying each endpoint once (and logging in again when
    the token was refused, as unary calls do: etcderrors.reauth_refusal)."""
    failures: list[tuple[str, str]] = []
    for endpoint in client.endpoint_order():
        for attempt in range(REAUTH_ATTEMPTS):
            stream = _Stream(client, endpoint, body)
            try:
                _check(await stream.get(client.timeout), client, key, endpoint)
                return stream
            except Reauth as exc:
                await stream.close()
                client.forget_token(endpoint)
                refusal = reauth_refusal(str(exc), attempt, client.user)
                if refusal is not None:
                    raise refusal from exc
                await asyncio.sleep(reauth_delay(str(exc), attempt, random.random()))
            except (_StreamBroken, Unreachable) as exc:
                await stream.close()
                failures.append((endpoint, str(exc)))
                client.mark_failed(endpoint)
                break
            except BaseException:
                await stream.close()
                raise
    raise EtcdUnavailable(failures)


async def watch(
    client: WatchingClient, key: bytes, range_end: bytes | None, start_revision: int, prev_kv: bool
) -> AsyncGenerator[WatchBatch, None]:
    body = watch_request(key, range_end, start_revision, prev_kv)
    stream = await _open(client, key, body)
    try:
        while True:
            try:
                resp = await stream.get()
                _check(resp, client, key, stream.endpoint)
            except (_StreamBroken, Unreachable) as exc:
                client.mark_failed(stream.endpoint)
                raise EtcdUnavailable([(stream.endpoint, str(exc))]) from exc
            except Reauth as exc:  # token dropped mid-stream: the next watch() authenticates
                client.forget_token(stream.endpoint)
                raise EtcdUnavailable([(stream.endpoint, str(exc))]) from exc
            yield resp.batch
    finally:
        await stream.close()
