"""Option value parsers: every flag's value is checked while the command line is parsed, before
a command body runs, so a bad value never reaches etcd, a socket, BPF or the file system.

Each parser takes the flag's text and returns the parsed value or raises typer.BadParameter, which
click prefixes with the option's name (cli/_common.py prints it as one line, exit 2). The checks
themselves live with the data they describe (zt/addr.py, zt/identity/spiffe.py,
zt/fleet/connect.py ...); they are imported inside the parsers so that `zt --help` loads none of
them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import typer

from zt.addr import SocketAddr
from zt.errors import UsageError, ZtError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A ceiling far above any real lifetime or deadline, so that a long run of digits (which float()
# turns into inf past ~309 of them) never reaches int(), datetime or a certificate as inf.
MAX_DURATION_DAYS = 36500
_LAB_POD = re.compile(r"[a-z][a-z0-9-]*")


def _bad(exc: ZtError) -> typer.BadParameter:
    """The error without its own `--flag: ` lead (click puts the option's name in front)."""
    text = str(exc)
    at = text.find(": got ")
    return typer.BadParameter(text[at + 2 :] if at >= 0 else text)


def address(text: str | SocketAddr) -> SocketAddr:
    """`ip:port` or `[ipv6]:port` (a SocketAddr is a default, already parsed)."""
    if isinstance(text, SocketAddr):
        return text
    try:
        return SocketAddr.parse(text, field="address")
    except ZtError as exc:
        if repr(text) in str(exc):
            raise _bad(exc) from None
        # the part before the port is not an IP address (zt resolves no names)
        expected = "ip:port or [ipv6]:port with an IPv4 or IPv6 address"
        raise typer.BadParameter(f"got {text!r}, expected {expected}") from None


def destination(text: str) -> str:
    """`ip:port`, `[ipv6]:port` or `hostname:port`, a mesh name the command resolves (returned as
    written: typer takes no union type; the command parses it again)."""
    from zt.addr import parse_destination  # noqa: PLC0415

    try:
        parse_destination(text, field="address")
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def listen_address(text: str) -> SocketAddr:
    """`ip:port` or `[ipv6]:port` to listen on, where port 0 (unlike in a destination) means
    "pick one"."""
    if text.endswith(":0"):
        return SocketAddr(address(text[:-1] + "1").ip, 0)
    return address(text)


def ip(text: str) -> str:
    """An IPv4 or IPv6 address (returned as written)."""
    from zt.addr import parse_ip  # noqa: PLC0415

    try:
        parse_ip(text, field="address")
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def spiffe_id(text: str) -> str:
    """`spiffe://<td>/ns/<ns>/sa/<sa>` (returned as written)."""
    from zt.identity.spiffe import SpiffeId  # noqa: PLC0415

    try:
        SpiffeId.parse(text)
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def trust_domain(text: str) -> str:
    from zt.identity.spiffe import trust_domain as check  # noqa: PLC0415

    try:
        return check(text)
    except ZtError:
        expected = "lowercase letters, digits, '.', '-', '_' (e.g. cluster.local)"
        raise typer.BadParameter(f"got {text!r}, expected {expected}") from None


def node_name(text: str) -> str:
    """A node name: it becomes a SPIFFE path segment (sa/node-<name>) and an etcd key segment."""
    from zt.identity.spiffe import segment  # noqa: PLC0415

    try:
        return segment(text, field="node")
    except ZtError as exc:
        raise _bad(exc) from None


def parse_duration(flag: str, text: str, *, floor: float = 0.0) -> float:
    """`90s`, `30m`, `24h`, `7d` or plain seconds; at least `floor` seconds, at most
    MAX_DURATION_DAYS."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{flag}: got {text!r}, expected a duration like 90s, 30m, 24h or 7d")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < floor:
        raise UsageError(f"{flag}: got {text!r}, expected at least {floor:.0f}s")
    if seconds > MAX_DURATION_DAYS * _UNITS["d"]:
        raise UsageError(f"{flag}: got {text!r}, expected at most {MAX_DURATION_DAYS}d")
    return seconds


def duration(floor: float = 0.0) -> Callable[[str | float], float]:
    """A parser of durations of at least `floor` seconds. A number is a default given in
    seconds (click passes defaults through the parser too)."""

    def parse(text: str | float) -> float:
        if isinstance(text, int | float):
            return float(text)
        try:
            return parse_duration("duration", text, floor=floor)
        except ZtError as exc:
            raise _bad(exc) from None

    return parse


def etcd_urls(text: str) -> str:
    """Comma-separated etcd client URLs (returned as written; EtcdSettings keeps the parse)."""
    from zt.fleet.connect import parse_endpoints  # noqa: PLC0415

    try:
        parse_endpoints(text)
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def etcd_prefix(text: str) -> str:
    from zt.fleet.connect import parse_prefix  # noqa: PLC0415

    try:
        parse_prefix(text)
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def etcd_user(text: str) -> str:
    if not text.strip() or not text.isprintable():
        raise typer.BadParameter(f"got {text!r}, expected an etcd user name")
    return text


def join_token(text: str) -> str:
    from zt.fleet.tokens import Token  # noqa: PLC0415

    try:
        Token.parse(text)
    except ZtError:  # its message does not repeat the secret-looking value: neither do we
        expected = "ztjoin-<8 hex>.<43 base64url chars> as `zt ca token create` prints it"
        message = f"got a value that is not a join token, expected {expected}"
        raise typer.BadParameter(message) from None
    return text


def allow_rule(text: str) -> str:
    from zt.state.loopguard import parse_allow  # noqa: PLC0415

    try:
        parse_allow(text)
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def uid(text: str) -> str:
    if not text or not text.isprintable():
        raise typer.BadParameter(f"got {text!r}, expected a workload uid from the mesh config")
    return text


def netns(text: str) -> str:
    """The form of a pod netns: a name under /run/netns or an absolute path (the node checks
    that it is a network namespace, zt/node/podapi.py check_netns)."""
    named = "/" not in text and text not in ("", ".", "..")
    if not (named or text.startswith("/")) or "\0" in text:
        expected = "a name under /run/netns or an absolute path to a netns file"
        raise typer.BadParameter(f"got {text!r}, expected {expected}")
    return text


def lab_name(text: str) -> str:
    from zt.lab.control import UpOptions, check_options  # noqa: PLC0415

    try:
        check_options(UpOptions(name=text))
    except ZtError as exc:
        raise _bad(exc) from None
    return text


def lab_member(text: str) -> str:
    """A lab pod (pod1-2), node (node1) or `ext`."""
    if not _LAB_POD.fullmatch(text):
        raise typer.BadParameter(f"got {text!r}, expected a pod (pod1-1), a node (node1) or ext")
    return text


def mesh_file(text: str | Path) -> Path:
    """The mesh file a node serves and watches: an existing file (stdin can't be watched)."""
    path = Path(text)
    if not path.is_file():
        why = "a directory" if path.is_dir() else "no such file"
        raise typer.BadParameter(f"got {str(text)!r}, expected the mesh file, YAML or JSON ({why})")
    return path


def input_file(text: str | Path) -> Path:
    """A file to read (a pipe such as bash's `<(...)` too), or `-` for stdin."""
    path = Path(text)
    if str(text) != "-" and (path.is_dir() or not path.exists()):
        why = "a directory" if path.is_dir() else "no such file"
        raise typer.BadParameter(
            f"got {str(text)!r}, expected a file to read, or - for stdin ({why})"
        )
    return path


def out_prefix(text: str) -> Path:
    """A file name prefix whose directory exists (OUT.pem, OUT.key ... are written there)."""
    path = Path(text)
    if not text or text.endswith("/") or not path.parent.is_dir():
        raise typer.BadParameter(f"got {text!r}, expected DIR/NAME in an existing directory")
    return path
