"""Process logging for `zt run`: access-log lines as they are, other records with time and level,
in text or JSON lines.

Logging never blocks the data path. A record is formatted in the thread that logs it (the line is
final there: arguments may change later) and put on a bounded queue; one writer thread writes the
lines to stderr, many per write(2). When stderr does not drain (a full pipe, a stopped reader) the
queue fills and further records are dropped and counted (`dropped_total()`, exported as
`zt_log_dropped_total`) instead of stalling the event loop in write(2). `shutdown()` (also run at
exit) flushes what is queued, waiting a bounded time.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Iterator
from logging.handlers import QueueHandler

QUEUE_SIZE = 10_000  # lines waiting for stderr; past this, records are dropped and counted
WRITE_BATCH = 512  # lines taken off the queue at once (written PIPE_BUF bytes at a time)
FLUSH_TIMEOUT = 2.0  # seconds shutdown() waits for the queue to reach stderr

# Every logger zt names, the scopes `/logging` accepts (a name from a request never creates a
# logger). A module that adds `logging.getLogger("zt.x")` adds "zt.x" here;
# tests/unit/telemetry/test_logsetup.py checks the list against the source tree.
LOGGER_SCOPES: tuple[str, ...] = (
    "zt",
    "zt.access",
    "zt.config",
    "zt.fleet.certsource",
    "zt.fleet.join",
    "zt.fleet.mesh",
    "zt.fleet.signer",
    "zt.identity.ca",
    "zt.identity.manager",
    "zt.node",
    "zt.node.conntrack",
    "zt.node.control",
    "zt.node.inbound",
    "zt.node.outbound",
    "zt.node.pod",
    "zt.node.podapi",
    "zt.node.socks5",
    "zt.node.worker",
    "zt.node.workers",
    "zt.proxy.accept",
    "zt.proxy.driver",
    "zt.proxy.forward",
    "zt.proxy.guard",
    "zt.proxy.server",
    "zt.telemetry.http",
)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "zt.access":
            return record.getMessage()  # already a complete, timestamped record
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        text = f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "zt.access":
            return record.getMessage()  # access_record(..., "json") is one JSON object already
        doc: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


class _Drops:
    """Records that never reached stderr (queue full, or the write failed)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    @property
    def count(self) -> int:
        return self._count


_DROPS = _Drops()


def dropped_total() -> int:
    """Log records dropped since the process started (for the `zt_log_dropped_total` counter)."""
    return _DROPS.count


Lines = queue.SimpleQueue[bytes | None]  # final lines; None ends the writer


class _DroppingQueueHandler(QueueHandler):
    """A QueueHandler that never waits and never writes: the record becomes its final line here,
    in the logging thread, and is queued as bytes. With `limit` lines queued, a record is dropped
    and counted (the stdlib's handler would block on a bounded queue, or call handleError, which
    writes a traceback to the very stderr that is stuck)."""

    def __init__(self, lines: Lines, limit: int) -> None:
        super().__init__(lines)
        self.lines = lines
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if self.lines.qsize() >= self.limit:  # checked first: a flood costs no formatting
            _DROPS.add()
            return
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # a bad format string: count it, don't print a traceback
            _DROPS.add()
            return
        self.lines.put_nowait(line)


class _Writer(threading.Thread):
    """The one thread that writes to stderr, straight to the fd with os.write (not through
    sys.stderr, whose lock the interpreter takes at exit)."""

    def __init__(self, lines: Lines, fd: int) -> None:
        super().__init__(name="zt-log-writer", daemon=True)
        self.lines = lines
        self.fd = fd

    def run(self) -> None:
        while True:
            batch = [self.lines.get()]
            # Everything already queued goes out in one write(2): per-line writes would let a
            # burst of logging outrun this thread (it gets the GIL only between the loop's slices).
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None and len(batch) < WRITE_BATCH:
                    batch.append(self.lines.get_nowait())
            for chunk, count in _chunks([line for line in batch if line is not None]):
                self._write(chunk, count)
            if batch[-1] is None:
                return

    def _write(self, text: bytes, lines: int) -> None:
        data = memoryview(text)
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            _DROPS.add(lines)  # (some of them may have been written in part)


def _chunks(lines: list[bytes]) -> Iterator[tuple[bytes, int]]:
    """Whole lines joined into writes of at most PIPE_BUF bytes. pipe(7): "POSIX.1 says that
    writes of less than PIPE_BUF bytes must be atomic" (Linux: "n <= PIPE_BUF"), so the lines of
    the node's worker processes, which share this stderr, never interleave mid-line (a longer line
    is written alone, as it was before)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > select.PIPE_BUF:
            yield b"".join(chunk), len(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield b"".join(chunk), len(chunk)


class _Pipeline:
    """The handler and writer `configure` installed (module state without `global`)."""

    active: tuple[_DroppingQueueHandler, _Writer] | None = None


def configure(
    log_format: str = "text",
    level: int = logging.INFO,
    *,
    fd: int | None = None,
    queue_size: int = QUEUE_SIZE,
) -> None:
    """Route every record through a bounded queue to a writer thread on `fd` (default: stderr).
    Calling it again replaces the previous pipeline (flushing it first)."""
    shutdown()
    lines: Lines = queue.SimpleQueue()
    handler = _DroppingQueueHandler(lines, queue_size)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _TextFormatter())
    writer = _Writer(lines, sys.stderr.fileno() if fd is None else fd)
    writer.start()
    _Pipeline.active = (handler, writer)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("zt").setLevel(level)


def shutdown(timeout: float = FLUSH_TIMEOUT) -> None:
    """Stop the writer thread after it wrote what is queued, waiting at most `timeout` seconds
    (a stuck stderr must not keep the process from exiting: what is left is lost)."""
    if _Pipeline.active is None:
        return
    (handler, writer), _Pipeline.active = _Pipeline.active, None
    logging.getLogger().removeHandler(handler)
    writer.lines.put(None)
    writer.join(timeout)


atexit.register(shutdown)
