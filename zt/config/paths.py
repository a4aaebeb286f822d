"""Field paths as users read them: `workloads[3].workloadIps[0]`, `services[1].ports[80]`."""

from __future__ import annotations

import re
from collections.abc import Iterable

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render(loc: Iterable[int | str]) -> str:
    """Render a pydantic-style location tuple; list indexes and mapping keys go in brackets."""
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for "the key itself was bad"; the key precedes it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]" if not part.isdigit() else f"[{part}]"
    return out or "(document)"
