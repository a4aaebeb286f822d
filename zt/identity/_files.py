"""Small file helpers: atomic writes with the final mode set at creation (keys never world-readable)."""

from __future__ import annotations

import os
from pathlib import Path

KEY_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write `data` to `path` via a same-directory temp file and rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # umask may have narrowed or an old temp file may have had other bits
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
