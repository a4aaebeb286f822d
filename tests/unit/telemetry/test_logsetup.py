"""Logging through a bounded queue: a stuck stderr never blocks a logging call, drops are counted,
the queue is flushed at exit, and `/logging`'s scopes are every logger zt names."""

from __future__ import annotations

import ast
import json
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zt.telemetry import logsetup
from zt.timescale import scaled

ROOT = Path(__file__).resolve().parents[3]

_CHILD = """
import json, logging, sys, time
from zt.telemetry import logsetup
logsetup.configure("text", queue_size=int(sys.argv[1]))
log = logging.getLogger("zt.node")
n, slowest = int(sys.argv[2]), 0.0
started = time.monotonic()
for i in range(n):
    t = time.monotonic()
    log.info("record %d %s", i, "x" * 1000)
    slowest = max(slowest, time.monotonic() - t)
total = time.monotonic() - started
print(json.dumps({"total": total, "slowest": slowest, "dropped": logsetup.dropped_total()}),
      flush=True)
"""


def test_stuck_stderr_never_blocks_logging_and_drops_are_counted() -> None:
    """The child's stderr is a pipe nobody reads until the child has exited: 20,000 records of
    1 KB (20 MB, ~300 times a pipe's 64 KiB) are logged without blocking; what did not fit is
    dropped and counted; the process still exits (the flush at exit gives up after a bound)."""
    n, size = 20_000, 1000
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(size), str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        report = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=scaled(60)) == 0
        written = proc.stderr.read().count(b"\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert report["slowest"] < scaled(1.0), report  # no call waited for the pipe
    assert report["dropped"] > n // 2, report  # most of them could not be written
    # Every record was either written or counted as dropped (the queue was flushed at exit as
    # far as the pipe took it; the rest, still queued when the flush gave up, is neither).
    assert written + report["dropped"] <= n
    assert written >= 1


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, zt_level = root.handlers[:], root.level, logging.getLogger("zt").level
    try:
        yield
    finally:
        logsetup.shutdown()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("zt").setLevel(zt_level)


@pytest.mark.usefixtures("restore_logging")
def test_every_record_is_written_or_counted() -> None:
    """A pipe read only after the burst: lines that reached it plus drops equal what was logged,
    once shutdown() has flushed the queue."""
    r, w = os.pipe()
    chunks: list[bytes] = []
    try:
        logsetup.configure("json", fd=w, queue_size=50)
        before = logsetup.dropped_total()
        log = logging.getLogger("zt.config")
        n = 2000
        for i in range(n):
            log.warning("line %d %s", i, "y" * 500)
        reader = threading.Thread(target=lambda: _drain(r, chunks))
        reader.start()
        logsetup.shutdown(timeout=scaled(10))
        os.close(w)
        w = -1
        reader.join(scaled(10))
        lines = b"".join(chunks).splitlines()
        dropped = logsetup.dropped_total() - before
        assert dropped > 0 and len(lines) + dropped == n
        doc = json.loads(lines[0])
        assert doc["logger"] == "zt.config" and doc["msg"].startswith("line 0 yyy")
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def _drain(fd: int, chunks: list[bytes]) -> None:
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_and_tracebacks_survive_the_queue() -> None:
    r, w = os.pipe()
    try:
        logsetup.configure("text", fd=w)
        log = logging.getLogger("zt.node")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("pod %s failed", "lab/a")
        logging.getLogger("zt.access").info("ACCESS LINE as is")
        logsetup.shutdown()
        os.close(w)
        w = -1
        text = os.read(r, 65536).decode()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    first, *rest = text.splitlines()
    assert first.endswith("Z error zt.node: pod lab/a failed")
    assert "ValueError: boom" in text and rest[-1] == "ACCESS LINE as is"


def _named_loggers() -> set[str]:
    """Every logger name zt's and cli's modules pass to logging.getLogger, read from the source."""
    names: set[str] = set()
    for path in [*(ROOT / "zt").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger"):
                continue
            if not node.args:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id == "__name__":
                names.add(module)
    return {n for n in names if n == "zt" or n.startswith("zt.")}


def test_logging_scopes_are_the_loggers_zt_names() -> None:
    missing = _named_loggers() - set(logsetup.LOGGER_SCOPES)
    assert not missing, f"add {sorted(missing)} to zt/telemetry/logsetup.py LOGGER_SCOPES"


def test_writes_keep_lines_whole_and_within_pipe_buf() -> None:
    """Worker processes share stderr: each write(2) is whole lines and at most PIPE_BUF bytes
    (atomic on a pipe), except a single longer line, which goes alone."""
    lines = [b"a" * 1000 + b"\n"] * 9 + [b"b" * 10_000 + b"\n", b"c\n"]
    chunks = list(logsetup._chunks(lines))
    assert b"".join(c for c, _ in chunks) == b"".join(lines)
    assert sum(n for _, n in chunks) == len(lines)
    assert [n for _, n in chunks] == [4, 4, 1, 1, 1]
    assert all(len(c) <= select.PIPE_BUF or n == 1 for c, n in chunks)
