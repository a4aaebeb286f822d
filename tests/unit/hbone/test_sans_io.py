"""The core is sans-IO: importing it loads no I/O machinery (docs/design.md §9)."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_io_modules() -> None:
    probe = (
        "import sys, zt.hbone, zt.hbone.connection; "
        "print(sorted(m for m in ('asyncio', 'socket', 'ssl', 'bcc', 'selectors') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
