"""A tiny HTTP/1.1 server for zt's operational endpoints (metrics, readiness, admin).

The parser is sans-IO (`parse_head`); `serve` is the asyncio adapter. One request per connection
(`Connection: close`): these endpoints are scraped, not browsed, and that keeps the state machine out.

Every resource a client can hold is bounded (`Limits`): connections open at once (the extra ones are
closed at once and counted), the time to send the head and the body (a slowloris client is cut off),
the size of both, and the time a client may take to read the answer. A handler that raises answers
500; no exception of one connection reaches the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from zt.errors import UsageError

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


log = logging.getLogger("zt.telemetry.http")


class BadHttpRequest(UsageError):
    http_status = 400
    reason = "bad_http_request"


@dataclass(frozen=True)
class Limits:
    """What one endpoint server lets its clients hold."""

    max_connections: int = 32
    """Connections open at once; one more is closed at once (and counted in `refused_total`)."""
    max_per_source: int = 8
    """Of those, from one source address: one host holding idle connections must not starve
    the kubelet's (or Prometheus's) probes of the rest."""
    head_timeout: float = 3.0
    """Seconds from accept to the end of the request head (a slowloris client is closed)."""
    body_timeout: float = 3.0
    """Seconds for the body the head announced (at most MAX_BODY bytes)."""
    write_timeout: float = 10.0
    """Seconds a client may take to read the answer (a client that never reads is closed)."""

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise UsageError(f"max_connections: got {self.max_connections}, expected >= 1")
        if self.max_per_source < 1:
            raise UsageError(f"max_per_source: got {self.max_per_source}, expected >= 1")


@dataclass
class ServerStats:
    """Counters of one endpoint server (read by the metrics collector; the loop thread writes)."""

    open: int = 0
    by_source: dict[str, int] = field(default_factory=dict)  # open connections per address
    refused_total: int = 0
    timed_out_total: int = 0
    failed_total: int = 0  # the handler raised: answered 500


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())

    def encode(self) -> bytes:
        head = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


def parse_head(head: bytes) -> tuple[Request, int]:
    """Parse the request line and headers (without the final CRLFCRLF). Returns the request and the
    body length it announces. RFC 9112 §3: request-line = method SP request-target SP HTTP-version."""
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        raise BadHttpRequest("request head: not ASCII") from None
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadHttpRequest(f"request line: got {lines[0][:80]!r}, expected METHOD PATH HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadHttpRequest(f"header line: got {line[:80]!r}, expected 'Name: value'")
        headers[name.lower()] = value.strip()
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > MAX_BODY:
        raise BadHttpRequest(f"content-length: got {length_text!r}, expected 0..{MAX_BODY}")
    target = urlsplit(parts[1])
    query = dict(parse_qsl(target.query, keep_blank_values=True))
    return Request(parts[0], target.path or "/", query, headers), int(length_text)


Handler = Callable[[Request], Response | Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader, limits: Limits) -> Request:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=limits.head_timeout)
    request, length = parse_head(head[:-4])
    if not length:
        return request
    body = await asyncio.wait_for(reader.readexactly(length), timeout=limits.body_timeout)
    return Request(request.method, request.path, request.query, request.headers, body)


async def _respond(request: Request, handler: Handler, stats: ServerStats) -> Response:
    try:
        result = handler(request)
        return await result if inspect.isawaitable(result) else result
    except Exception:  # a bug in one handler answers 500 and is logged; the server carries on
        stats.failed_total += 1
        log.exception("%s %s: handler failed", request.method, request.path)
        return Response.text(500, "internal error\n")


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    limits: Limits,
    stats: ServerStats,
) -> None:
    try:
        response = await _respond(await _read_request(reader, limits), handler, stats)
    except BadHttpRequest as exc:
        response = Response.text(400, f"{exc}\n")
    except asyncio.LimitOverrunError:
        # RFC 6585 §5: 431 "the server is unwilling to process the request because its header
        # fields are too large"
        response = Response.text(431, f"request head: over {MAX_HEAD} bytes\n")
    except TimeoutError:
        stats.timed_out_total += 1
        return
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    writer.write(response.encode())
    try:
        await asyncio.wait_for(writer.drain(), timeout=limits.write_timeout)
    except TimeoutError:
        stats.timed_out_total += 1
        writer.transport.abort()
    except ConnectionError:
        pass


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    limits: Limits,
    stats: ServerStats,
) -> None:
    peer = writer.get_extra_info("peername")
    source = str(peer[0]) if isinstance(peer, tuple) else ""
    held = stats.by_source.get(source, 0)
    if stats.open >= limits.max_connections or held >= limits.max_per_source:
        stats.refused_total += 1
        writer.transport.abort()  # at once: no task, no buffer, no deadline held for it
        return
    stats.open += 1
    stats.by_source[source] = held + 1
    try:
        await _exchange(reader, writer, handler, limits, stats)
    except Exception:  # nothing one connection does may reach the event loop
        log.exception("endpoint connection failed")
    finally:
        stats.open -= 1
        left = stats.by_source[source] - 1
        if left:
            stats.by_source[source] = left
        else:
            del stats.by_source[source]
        writer.close()


async def serve(
    host: str,
    port: int,
    handler: Handler,
    *,
    limits: Limits | None = None,
    stats: ServerStats | None = None,
) -> asyncio.Server:
    """Listen on host:port (port 0: any) and answer each connection's one request with `handler`.
    `::` means every address: asyncio makes IPv6 sockets v6-only, so IPv4 gets its own socket.
    `stats` (one per server) counts open, refused and timed-out connections."""
    hosts: str | list[str] = ["0.0.0.0", "::"] if host == "::" and port else host
    lim = limits or Limits()
    st = stats if stats is not None else ServerStats()
    return await asyncio.start_server(
        lambda r, w: _handle(r, w, handler, lim, st),
        hosts,
        port,
        limit=MAX_HEAD,
        reuse_address=True,
    )


def stats_samples(stats: dict[str, ServerStats]) -> list[tuple[str, str, str, float]]:
    """Registry collector samples for named endpoint servers (zt_endpoint_<name>_...)."""
    samples: list[tuple[str, str, str, float]] = []
    for name, st in sorted(stats.items()):
        samples += [
            (f"zt_endpoint_{name}_connections", f"{name} endpoint connections open", "gauge",
             float(st.open)),
            (f"zt_endpoint_{name}_refused_total", f"{name} endpoint connections closed at once "
             "(over the connection cap)", "counter", float(st.refused_total)),
            (f"zt_endpoint_{name}_timed_out_total", f"{name} endpoint connections closed for a "
             "slow request or a client that did not read", "counter", float(st.timed_out_total)),
        ]  # fmt: skip
    return samples
