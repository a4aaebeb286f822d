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

from zt.errors import UsageError

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
    "zt.dns",
    "zt.fleet.certsource",
    "zt.fleet.join",
    "zt.fleet.mesh",
    "zt.fleet.signer",
    "zt.identity.ca",
    "zt.identity.manager",
    "zt.node",
    "zt.node.conntrack",
    "zt.node.control",
    "zt.node.flows",
    "zt.node.pod",
    "zt.node.podnet",
    "zt.node.podapi",
    "zt.node.worker",
    "zt.node.workers",
    "zt.proxy",
    "zt.proxy.accept",
    "zt.proxy.driver",
    "zt.proxy.forward",
    "zt.proxy.guard",
    "zt.proxy.inbound",
    "zt.proxy.outbound",
    "zt.proxy.server",
    "zt.proxy.socks5",
    "zt.telemetry.http",
)

# ztunnel's level names (tracing's) onto Python's: `trace` below DEBUG, `off` above anything zt
# logs, `warn` is WARNING.
TRACE = logging.DEBUG - 5
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(OFF, "OFF")
LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,  # not ztunnel's; Python's, so every level zt shows reads back
    "off": OFF,
}

# ztunnel's log targets (its module paths, and `access` for its access log) onto the zt scopes
# doing that work, so `POST /logging?level=ztunnel::proxy=debug` means here what it means there.
# A tracing target also covers every target under it (`ztunnel::proxy` covers
# `ztunnel::proxy::inbound`); each entry lists the scopes it covers. `ztunnel` sets the `zt`
# logger, which every scope inherits from unless set on its own (`access` included: in ztunnel
# `access` is a target of its own, outside `ztunnel`).
ZTUNNEL_SCOPES: dict[str, tuple[str, ...]] = {
    "access": ("zt.access",),
    "ztunnel": ("zt",),
    "ztunnel::app": ("zt.node", "zt.node.workers", "zt.node.worker", "zt.node.control"),
    "ztunnel::proxy": (
        "zt.proxy",
        "zt.proxy.accept",
        "zt.proxy.driver",
        "zt.proxy.forward",
        "zt.proxy.guard",
        "zt.proxy.server",
        "zt.proxy.inbound",
        "zt.proxy.outbound",
        "zt.proxy.socks5",
        "zt.node.flows",
        "zt.node.conntrack",
    ),
    "ztunnel::proxy::inbound": ("zt.proxy.inbound", "zt.node.flows"),
    "ztunnel::proxy::outbound": ("zt.proxy.outbound",),
    "ztunnel::proxy::socks5": ("zt.proxy.socks5",),
    "ztunnel::proxy::h2": ("zt.proxy.driver",),
    "ztunnel::proxy::connection_manager": ("zt.node.conntrack",),
    "ztunnel::identity": ("zt.identity.ca", "zt.identity.manager", "zt.fleet.certsource"),
    "ztunnel::xds": ("zt.config", "zt.fleet.mesh"),
    "ztunnel::inpod": ("zt.node.pod", "zt.node.podapi"),
    "ztunnel::admin": ("zt.telemetry.http",),
    # ztunnel's DNS access log is target `dns`, its DNS proxy module `ztunnel::dns`
    "dns": ("zt.dns",),
    "ztunnel::dns": ("zt.dns",),
    "ztunnel::hyper_util": ("zt.telemetry.http",),
}


class LogLevelError(UsageError):
    """A `/logging` directive naming a scope or level that is not one of the known ones."""

    reason = "bad_log_level"


def _clipped(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def parse_levels(directives: str) -> list[tuple[tuple[str, ...], int]]:
    """ztunnel's `/logging?level=` value, a comma list of `<level>` (the default, i.e. the `zt`
    scope) or `<scope>=<level>`, as (zt scopes, Python level) pairs. A scope is a ztunnel target
    (ZTUNNEL_SCOPES) or a zt scope (LOGGER_SCOPES): a name from a request never creates a logger
    (the logging module keeps every logger ever named, for the life of the process)."""
    out: list[tuple[tuple[str, ...], int]] = []
    for clause in directives.split(","):
        scope, sep, level = clause.strip().rpartition("=")
        scopes = ZTUNNEL_SCOPES.get(scope) or ((scope,) if scope in LOGGER_SCOPES else ())
        if sep and not scopes:
            raise LogLevelError(
                f"scope: got {_clipped(scope)}, expected one of {', '.join(ZTUNNEL_SCOPES)} "
                f"or a zt scope: {', '.join(LOGGER_SCOPES)}"
            )
        if level.lower() not in LEVELS:
            raise LogLevelError(
                f"level: got {_clipped(level)} in {_clipped(clause)}, "
                f"expected one of {', '.join(LEVELS)}"
            )
        out.append((scopes if sep else ("zt",), LEVELS[level.lower()]))
    return out


def set_levels(directives: str, *, reset: bool = False) -> None:
    """Apply `directives` (parse_levels) on top of the current levels, as ztunnel adds them to its
    filter; `reset` first puts every scope back to how `configure` left it. All or nothing: an
    invalid clause raises LogLevelError before any level changes."""
    parsed = parse_levels(directives) if directives else []
    if reset:
        for name in LOGGER_SCOPES:
            logger = logging.root.manager.loggerDict.get(name)
            if isinstance(logger, logging.Logger):
                logger.setLevel(logging.NOTSET)
        logging.getLogger("zt").setLevel(_Pipeline.default_level)
    for scopes, level in parsed:
        for name in scopes:
            logging.getLogger(name).setLevel(level)


def level_name(level: int) -> str:
    """A Python level under its ztunnel name (`warn`, `off`...); CRITICAL has none."""
    names = {number: name for name, number in LEVELS.items()}
    return names.get(level, logging.getLevelName(level).lower())


def effective_level(name: str) -> int:
    """The level `name` logs at, read without creating it (a scope whose module isn't loaded yet
    has no logger: its nearest existing ancestor decides)."""
    loggers = logging.root.manager.loggerDict
    while name:
        logger = loggers.get(name)
        if isinstance(logger, logging.Logger):
            return logger.getEffectiveLevel()
        name = name.rpartition(".")[0]
    return logging.root.level


def level_directive() -> str:
    """Every scope's level as one `/logging?level=` value (`info,zt.access=debug`): POSTed with
    `reset` it sets the same levels, which is how the leader hands them to its followers."""
    loggers = logging.root.manager.loggerDict
    explicit = [
        f"{name}={level_name(logger.level)}"
        for name in LOGGER_SCOPES
        if name != "zt" and isinstance(logger := loggers.get(name), logging.Logger) and logger.level
    ]
    return ",".join([level_name(effective_level("zt")), *explicit])


def current_levels() -> str:
    """What `/logging` answers: ztunnel's one line (`current log level is info,zt.access=debug`,
    which POSTed back sets the same levels), then every scope's effective level."""
    lines = [f"{name}: {level_name(effective_level(name))}\n" for name in LOGGER_SCOPES]
    return f"current log level is {level_directive()}\n" + "".join(lines)


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
    default_level: int = logging.NOTSET  # the `zt` level `configure` set (`/logging?reset`)


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
    _Pipeline.default_level = level


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
