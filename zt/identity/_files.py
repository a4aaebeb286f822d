"""Small file helpers: atomic writes with the final mode set at creation (keys never world-readable).

`write_atomic` either leaves the complete new file at `path` or leaves `path` as it was: the bytes go
to an unpredictable temp name created with O_EXCL in the same directory, every byte is accounted for
(write(2) may write less than asked: "the number of bytes written may be less than count if, for
example, ... the RLIMIT_FSIZE resource limit is encountered"), the file and then its directory are
fsynced, and only then is it renamed over `path`. On any failure the temp file is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from zt.errors import ZtError

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
_TEMP_TRIES = (
    8  # O_EXCL collisions in a row before giving up (64 random bits each: never, honestly)
)


class FileWriteError(ZtError):
    """A file could not be written completely; the previous content (if any) is untouched."""

    reason = "file_write_failed"


Writer = Callable[[int, memoryview], int]


def write_all(fd: int, data: bytes, name: Path, write: Writer = os.write) -> None:
    """Write every byte of `data` to `fd`, looping over short writes. A write that makes no
    progress (returns 0) or fails raises FileWriteError naming `name`."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            n = write(fd, view[done:])
        except OSError as exc:
            raise FileWriteError(
                f"{name}: wrote {done} of {len(view)} bytes, then {exc.strerror or exc}"
            ) from None
        if n <= 0:
            raise FileWriteError(f"{name}: wrote {done} of {len(view)} bytes, then no progress")
        done += n


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new file next to `path` under a random name. O_EXCL|O_NOFOLLOW: a file or symlink someone
    planted at the name is never opened, so it can't redirect or pre-own our write."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise FileWriteError(f"{path}: cannot create a temp file: {exc.strerror}") from None
    raise FileWriteError(f"{path}: {_TEMP_TRIES} temp names in a row already existed")


def _fsync_dir(directory: Path) -> None:
    """fsync(2): "Calling fsync() does not necessarily ensure that the entry in the directory
    containing the file has also reached disk. For that an explicit fsync() on a file descriptor
    for the directory is also needed." Without it a crash can undo the rename."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE) -> None:
    """Write `data` to `path` via a same-directory temp file and rename, so readers never see half.
    Raises FileWriteError (naming `path`) and leaves `path` and its directory as they were."""
    fd, tmp = _create_temp(path, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open()
            write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise FileWriteError(f"{path}: {exc.strerror or exc}") from None
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as exc:
        raise FileWriteError(
            f"{path}: written, but fsync of its directory: {exc.strerror}"
        ) from None
