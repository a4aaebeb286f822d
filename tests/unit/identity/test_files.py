"""write_atomic: complete files or none, under real file-size limits and planted temp names."""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from zt.identity._files import KEY_MODE, FileWriteError, write_all, write_atomic

ROOT = Path(__file__).resolve().parents[3]
LIMIT = 150  # bytes: smaller than any PEM key or certificate


def _fsize_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: cap the child's file size; with SIGXFSZ ignored, write(2) returns EFBIG
    ("If the file size limit is exceeded ... the write fails with EFBIG") instead of killing it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_whole_file_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.key"
    write_atomic(target, b"x" * 100_000, KEY_MODE)
    assert target.read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == KEY_MODE
    assert _leftovers(tmp_path) == []


def test_short_writes_are_continued_and_stalls_named(tmp_path: Path) -> None:
    """write(2) may write less than asked; the loop writes the rest, and a write that makes no
    progress is an error naming the file, not a silently short file."""
    path = tmp_path / "out"
    calls: list[int] = []

    def dribble(fd: int, data: memoryview) -> int:
        calls.append(len(data))
        return os.write(fd, data[:7])

    with path.open("wb") as f:
        write_all(f.fileno(), b"0123456789" * 3, path, dribble)
    assert path.read_bytes() == b"0123456789" * 3
    assert calls == [30, 23, 16, 9, 2]
    with pytest.raises(FileWriteError, match=rf"{path}: wrote 0 of 5 bytes, then no progress"):
        write_all(0, b"hello", path, lambda fd, data: 0)


_CHILD = """
import sys
from pathlib import Path
from zt.identity._files import write_atomic
write_atomic(Path(sys.argv[1]), b"N" * int(sys.argv[2]))
"""


def test_file_size_limit_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    """Under RLIMIT_FSIZE the first write is short (150 of 400 bytes) and the next one fails with
    EFBIG: the error names the file, the old content stays, the temp file is gone."""
    target = tmp_path / "cert.pem"
    target.write_bytes(b"old content\n")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(target), "400"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_fsize_limit(LIMIT),
        check=False,
    )
    assert done.returncode != 0
    assert f"FileWriteError: {target}: wrote {LIMIT} of 400 bytes, then File too large" in (
        done.stderr
    )
    assert target.read_bytes() == b"old content\n"
    assert _leftovers(tmp_path) == []


def test_planted_temp_names_are_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_EXCL|O_NOFOLLOW: a symlink someone planted at the temp name is not followed (the victim
    stays intact) and the next random name is used."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tokens = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr("zt.identity._files.secrets.token_hex", lambda n: next(tokens))
    (tmp_path / ".ca.key.planted.tmp").symlink_to(victim)
    write_atomic(tmp_path / "ca.key", b"new key", KEY_MODE)
    assert (tmp_path / "ca.key").read_bytes() == b"new key"
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / ".ca.key.planted.tmp").is_symlink()  # untouched
    assert not (tmp_path / ".ca.key.fresh.tmp").exists()


def test_temp_names_are_unpredictable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".tmp"):
            seen.append(Path(path).name)
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        return real(path, flags, mode)

    monkeypatch.setattr("zt.identity._files.os.open", spy)
    for _ in range(3):
        write_atomic(tmp_path / "f", b"x")
    assert len(set(seen)) == 3 and all(len(name) == len(".f.0123456789abcdef.tmp") for name in seen)


def test_unwritable_directory_is_a_zt_error(tmp_path: Path) -> None:
    with pytest.raises(FileWriteError, match=r"missing/f: cannot create a temp file"):
        write_atomic(tmp_path / "missing" / "f", b"x")


_ZT = "import sys; from cli.main import main; sys.argv[0] = 'zt'; main()"


def _zt(*args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _ZT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_fsize_limit(limit) if limit else None,
        check=False,
    )


def test_ca_issue_under_file_size_limit_fails_and_leaves_no_truncated_file(
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    init = _zt("ca", "init", "--ca-dir", str(ca_dir))
    assert init.returncode == 0, init.stderr
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spiffe = "spiffe://cluster.local/ns/shop/sa/cart"
    out = str(out_dir / "cart")
    args = ("ca", "issue", "--ca-dir", str(ca_dir), "--spiffe", spiffe, "--out", out)
    done = _zt(*args, limit=LIMIT)
    assert done.returncode != 0, done.stdout
    assert f"zt: {out_dir}/cart.key: wrote {LIMIT} of" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no truncated key, cert or temp
    # a limit the key fits in but the certificate does not: the key written first is removed
    done = _zt(*args, limit=400)
    assert done.returncode != 0 and f"zt: {out_dir}/cart.pem: wrote 400 of" in done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == []
    assert _zt(*args).returncode == 0  # without the limit, the same command works
    assert sorted(p.name for p in out_dir.iterdir()) == ["cart-bundle.pem", "cart.key", "cart.pem"]
