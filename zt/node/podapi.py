"""The node's pod API: a unix socket that `zt pod add|remove|list` talks to, for pods that come and
go while `zt run` is up.

Wire format: one JSON object per line each way. Requests: `{"op": "add", "uid": U, "netns": N}`,
`{"op": "remove", "uid": U}`, `{"op": "list"}`. Responses: `{"ok": true, ...}` or
`{"ok": false, "error": "...", "reason": "..."}`. The parsing is pure; `serve()` and `call()` are the
asyncio server and the blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from zt.errors import UsageError, ZtError

DEFAULT_SOCKET = Path("/run/zt/pods.sock")
MAX_LINE = 64 * 1024


class BadPodRequest(UsageError):
    reason = "bad_pod_request"


class PodApiUnavailable(ZtError):
    reason = "pod_api_unavailable"
    exit_code = 3


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodAdd(_Req):
    op: Literal["add"]
    uid: Annotated[str, Field(min_length=1)]
    netns: Annotated[str, Field(min_length=1)]


class PodRemove(_Req):
    op: Literal["remove"]
    uid: Annotated[str, Field(min_length=1)]


class PodList(_Req):
    op: Literal["list"]


PodCommand = Annotated[PodAdd | PodRemove | PodList, Field(discriminator="op")]
_ADAPTER: TypeAdapter[PodAdd | PodRemove | PodList] = TypeAdapter(PodCommand)


def decode_request(line: bytes) -> PodAdd | PodRemove | PodList:
    try:
        return _ADAPTER.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(request)"
        raise BadPodRequest(
            f"pod request {where}: got {first.get('input')!r}, expected {first['msg']}"
        ) from None


def encode(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def error_response(exc: ZtError) -> dict[str, object]:
    return {"ok": False, "error": str(exc), "reason": exc.reason}


Handler = Callable[[PodAdd | PodRemove | PodList], Awaitable[dict[str, object]]]


async def _session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler
) -> None:
    try:
        while line := await reader.readline():
            try:
                response = {"ok": True, **await handle(decode_request(line))}
            except ZtError as exc:
                response = error_response(exc)
            writer.write(encode(response))
            await writer.drain()
    except (ConnectionError, ValueError):  # ValueError: a line over MAX_LINE
        pass
    finally:
        writer.close()


async def serve(path: Path, handle: Handler) -> asyncio.Server:
    """Listen on `path` (mode 0600: only root manages pods); a stale socket file is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(
        lambda r, w: _session(r, w, handle), path=str(path), limit=MAX_LINE
    )
    os.chmod(path, 0o600)
    return server


def call(path: Path, request: Mapping[str, object], timeout: float = 30.0) -> dict[str, object]:
    """Send one request and wait for its response (blocking; for the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode(request))
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise PodApiUnavailable(
            f"pod API at {path}: {exc.strerror or exc} (is `zt run` up?)"
        ) from None
    if not data:
        raise PodApiUnavailable(f"pod API at {path} closed without answering")
    result: dict[str, object] = json.loads(data)
    return result
