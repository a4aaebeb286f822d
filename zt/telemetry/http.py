"""A tiny HTTP/1.1 server for zt's operational endpoints (metrics, readiness, admin).

The parser is sans-IO (`parse_request`); `serve` is the asyncio adapter. One request per connection
(`Connection: close`): these endpoints are scraped, not browsed, and that keeps the state machine out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from zt.errors import UsageError

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadHttpRequest(UsageError):
    http_status = 400
    reason = "bad_http_request"


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


async def _handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        request, length = parse_head(head[:-4])
        body = await asyncio.wait_for(reader.readexactly(length), timeout=10) if length else b""
        result = handler(
            Request(request.method, request.path, request.query, request.headers, body)
        )
        response = await result if inspect.isawaitable(result) else result
    except BadHttpRequest as exc:
        response = Response.text(400, f"{exc}\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        writer.close()
        return
    writer.write(response.encode())
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Listen on host:port (port 0: any) and answer each connection's one request with `handler`.
    `::` means every address: asyncio makes IPv6 sockets v6-only, so IPv4 gets its own socket."""
    hosts: str | list[str] = ["0.0.0.0", "::"] if host == "::" and port else host
    return await asyncio.start_server(
        lambda r, w: _handle(r, w, handler), hosts, port, limit=MAX_HEAD, reuse_address=True
    )
