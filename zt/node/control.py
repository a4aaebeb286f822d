"""The control channel between the leader and a follower worker: JSON lines on a socketpair.

Leader -> follower requests: `{"id": n, "op": "sync", "pods": {uid: netns}}` (serve exactly these
pods, answered once every listener is open), `{"id": n, "op": "ping"}` (liveness: a hung follower
still holds its share of every reuseport group, so the leader kills it). Follower -> leader:
`{"op": "hello", "worker": i, "pid": p}` once, when it can serve, then one `{"id": n, "ok": true, ...}` or `{"id": n, "ok": false, "error": ..., "reason": ...}` per
request, and `{"op": "config_changed"}` when its file watcher swapped in a new snapshot (the
leader then reloads at once and syncs everyone: workers disagree on policy for one round trip,
not for a whole poll interval). EOF either way means the other process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from zt.errors import ZtError

log = logging.getLogger("zt.node.control")

MAX_LINE = 16 * 1024 * 1024  # a metrics exposition with many label sets fits


class WorkerChannelError(ZtError):
    """The control channel broke, timed out, or carried something else than the protocol."""

    http_status = 503
    reason = "worker_unavailable"


class WorkerRequestFailed(ZtError):
    """A follower answered a request with an error."""

    http_status = 503
    reason = "worker_failed"


def encode(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, object]:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise WorkerChannelError(
            f"control line: got {line[:80]!r}, expected JSON ({exc})"
        ) from None
    if not isinstance(doc, dict):
        raise WorkerChannelError(f"control line: got {line[:80]!r}, expected a JSON object")
    return doc


class Channel:
    """One end of the control channel over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, object]]] = {}

    async def send(self, obj: Mapping[str, object]) -> None:
        self.writer.write(encode(obj))
        await self.writer.drain()

    async def receive(self) -> dict[str, object] | None:
        """The next message; None at EOF."""
        try:
            line = await self.reader.readline()
        except (ConnectionError, ValueError) as exc:  # ValueError: a line over MAX_LINE
            raise WorkerChannelError(f"control channel: {exc}") from None
        return decode(line) if line else None

    # -- leader side: requests and their answers ------------------------------------------------
    async def request(self, op: str, timeout: float, **fields: object) -> dict[str, object]:
        """Send a request and wait for its answer (read by `dispatch`)."""
        rid = next(self._ids)
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            await self.send({"id": rid, "op": op, **fields})
            async with asyncio.timeout(timeout):
                answer = await future
        except TimeoutError:
            raise WorkerChannelError(f"{op}: no answer within {timeout:g} s") from None
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerChannelError(f"{op}: {exc}") from None
        finally:
            self._waiting.pop(rid, None)
        if not answer.get("ok"):
            raise WorkerRequestFailed(f"{op}: {answer.get('error', 'failed')}")
        return answer

    async def dispatch(self, on_event: Callable[[dict[str, object]], None] | None = None) -> None:
        """Route answers to their requests until EOF; then fail whoever still waits. Messages
        that answer nothing (`{"op": "config_changed"}`) go to `on_event`."""
        try:
            while (msg := await self.receive()) is not None:
                rid = msg.get("id")
                future = self._waiting.get(rid) if isinstance(rid, int) else None
                if future is not None and not future.done():
                    future.set_result(msg)
                elif rid is None and on_event is not None:
                    on_event(msg)
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(WorkerChannelError("the worker went away"))

    # -- follower side: answer requests -------------------------------------------------------
    async def serve(
        self, handle: Callable[[dict[str, object]], Awaitable[dict[str, object]]]
    ) -> None:
        """Answer each request (concurrently: a scrape need not wait for a pod sync) until EOF."""
        tasks: set[asyncio.Task[None]] = set()

        async def answer(msg: dict[str, object]) -> None:
            try:
                reply = {"id": msg.get("id"), "ok": True, **await handle(msg)}
            except ZtError as exc:
                reply = {"id": msg.get("id"), "ok": False, "error": str(exc), "reason": exc.reason}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send(reply)

        while (msg := await self.receive()) is not None:
            task = asyncio.ensure_future(answer(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.writer.close()
