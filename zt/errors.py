"""The root of zt's error tree.

Every failure zt can report is one class. Each class carries how it surfaces everywhere it can
surface: the HTTP status an HBONE CONNECT answers with, the HTTP/2 error code of a stream reset, the
short reason written to logs and metrics (`response_flags`), and the CLI exit status. Foreign
exceptions (OSError, ssl.SSLError, h2 exceptions, pydantic errors) are translated into these once, at
the boundary where they are caught; code above that boundary only sees ZtError subclasses.

Rooms with many failure kinds keep their subclasses next to them (zt/identity/errors.py,
zt/hbone/errors.py, zt/capture/errors.py); they all derive from the classes here.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import ClassVar

# HTTP/2 error codes (RFC 9113 §7) used by the tree.
H2_NO_ERROR = 0x0
H2_PROTOCOL_ERROR = 0x1
H2_INTERNAL_ERROR = 0x2
H2_REFUSED_STREAM = 0x7
H2_CANCEL = 0x8
H2_CONNECT_ERROR = 0xA


class ZtError(Exception):
    """Base of every zt failure."""

    http_status: ClassVar[int] = 500
    h2_error_code: ClassVar[int] = H2_INTERNAL_ERROR
    reason: ClassVar[str] = "internal_error"
    exit_code: ClassVar[int] = 1


class UsageError(ZtError):
    """A value given on the command line or an API call is not of the expected form."""

    http_status = 400
    reason = "bad_input"
    exit_code = 2


# A rejected config must never cost more to report than to reject: a 364-byte file of YAML aliases
# once rendered as a 58 MB message. Each problem's value is shown at most this long, and at most this
# many problems are listed (the message says how many were left out).
MAX_VALUE_CHARS = 200
MAX_EXPECTED_CHARS = 300
MAX_PROBLEMS_SHOWN = 20


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 1]}\u2026 ({len(text)} chars)"


def _bounded_repr(value: object) -> str:
    """repr() that never walks a whole structure: reprlib stops at a few items and levels (so a
    shared, alias-expanded tree or a cycle costs as much as a small one)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = MAX_VALUE_CHARS, MAX_VALUE_CHARS, 40
    try:
        text = r.repr(value)
    except Exception:  # a foreign object whose __repr__ fails still gets reported
        text = f"<{type(value).__name__}>"
    return _clip(text, MAX_VALUE_CHARS)


@dataclass(frozen=True)
class FieldProblem:
    """One bad field: where it is, what it held, what was expected."""

    path: str
    value: object
    expected: str

    def __str__(self) -> str:
        where = _clip(self.path, MAX_VALUE_CHARS)
        expected = _clip(self.expected, MAX_EXPECTED_CHARS)
        return f"{where}: got {_bounded_repr(self.value)}, expected {expected}"


class ConfigError(ZtError):
    """A configuration document was rejected. Carries every problem found, each with its field path;
    the message lists the first MAX_PROBLEMS_SHOWN, each value clipped, and counts the rest."""

    reason = "config_invalid"
    exit_code = 2

    def __init__(self, source: str, problems: list[FieldProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [f"  {source}: {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more problem(s) not shown")
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n" + "\n".join(lines))


class AddressError(UsageError):
    """An `ip:port` / `[ipv6]:port` string that does not parse."""

    reason = "bad_address"


class NotFoundError(ZtError):
    """A named object (workload uid, pod, identity) does not exist."""

    http_status = 404
    reason = "not_found"
    exit_code = 2
