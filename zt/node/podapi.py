"""The node's pod API: a unix socket that `zt pod add|remove|list` talks to, for pods that come and
go while `zt run` is up.

Wire format: one JSON object per line each way. Requests: `{"op": "add", "uid": U, "netns": N}`,
`{"op": "remove", "uid": U}`, `{"op": "list"}`. Responses: `{"ok": true, ...}` or
`{"ok": false, "error": "...", "reason": "..."}`. The parsing is pure; `serve()` and `call()` are the
asyncio server and the blocking client.

Who may talk to it: only root. The socket is created 0600 (under a umask, so it is never wider, not
even between bind and a chmod), and each peer's SO_PEERCRED uid is checked as well (a widened mode
or a socket passed on still lets no one else in). What `netns` may name: only a network-namespace
file (`check_netns`), never the node's own namespace. Every line gets an answer: a malformed or
oversized line, a refused peer and a failing handler all answer `{"ok": false, ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from zt.errors import UsageError, ZtError

DEFAULT_SOCKET = Path("/run/zt/pods.sock")
MAX_LINE = 64 * 1024
NETNS_RUN_DIR = Path("/run/netns")  # where `ip netns add NAME` bind-mounts NAME
OWN_NETNS = Path("/proc/self/ns/net")
# include/uapi/linux/nsfs.h: #define NS_GET_NSTYPE _IO(NSIO, 0x3), NSIO 0xb7 ("Returns a namespace
# type"); include/uapi/linux/sched.h: #define CLONE_NEWNET 0x40000000
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000
_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }

log = logging.getLogger("zt.node.podapi")


class BadPodRequest(UsageError):
    reason = "bad_pod_request"


class PodApiForbidden(ZtError):
    """The peer is not root: managing pods opens listeners in namespaces and changes capture."""

    http_status = 403
    reason = "pod_api_forbidden"
    exit_code = 2


class PodApiUnavailable(ZtError):
    reason = "pod_api_unavailable"
    exit_code = 3


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodAdd(_Req):
    op: Literal["add"]
    uid: Annotated[str, Field(min_length=1)]
    netns: Annotated[str, Field(min_length=1)]


class PodRemove(_Req):
    op: Literal["remove"]
    uid: Annotated[str, Field(min_length=1)]


class PodList(_Req):
    op: Literal["list"]


PodCommand = Annotated[PodAdd | PodRemove | PodList, Field(discriminator="op")]
_ADAPTER: TypeAdapter[PodAdd | PodRemove | PodList] = TypeAdapter(PodCommand)


def decode_request(line: bytes) -> PodAdd | PodRemove | PodList:
    try:
        return _ADAPTER.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(request)"
        raise BadPodRequest(
            f"pod request {where}: got {first.get('input')!r}, expected {first['msg']}"
        ) from None


def check_peer(uid: int) -> None:
    """Only root manages pods (the socket's mode says so too; this holds if it is widened)."""
    if uid != 0:
        raise PodApiForbidden(f"pod API peer: got uid {uid}, expected root (uid 0)")


_NETNS_EXPECTED = "a network namespace: a name under /run/netns or an absolute path to a netns file"


def check_netns(value: str, *, run_dir: Path = NETNS_RUN_DIR, own: Path = OWN_NETNS) -> Path:
    """The file `netns` names, if it is a network namespace other than the node's own.

    A name (no `/`) is looked up under `run_dir` (`ip netns add` puts it there) and must exist; a
    path must be absolute. The file must be an nsfs inode of type CLONE_NEWNET (ioctl_ns(2):
    NS_GET_NSTYPE "returns the type of the namespace referred to by the file descriptor"), and
    not the namespace the daemon runs in (same st_dev/st_ino as /proc/self/ns/net): a pod there
    would capture the node itself. Raises BadPodRequest naming the field, value and expectation.
    """

    def bad(why: str) -> BadPodRequest:
        return BadPodRequest(f"netns: got {value!r}, expected {_NETNS_EXPECTED} ({why})")

    if "/" not in value:
        if value in ("", ".", ".."):
            raise bad("not a name")
        path = run_dir / value
    elif not value.startswith("/"):
        raise bad("a relative path")
    else:
        path = Path(value)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # nsfs files are regular; never open a FIFO or a device
            raise bad("not a namespace file")
        if _ns_type(path) != CLONE_NEWNET:
            raise bad("not a network namespace file")
    except ValueError:  # an embedded NUL
        raise bad("not a path") from None
    except OSError as exc:
        raise bad(exc.strerror or type(exc).__name__) from None
    mine = os.stat(own)
    if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
        raise bad("that is the node's own network namespace")
    return path


def _ns_type(path: Path) -> int | None:
    """NS_GET_NSTYPE of the file, or None when it is not a namespace file (ENOTTY). Opening it
    may raise OSError (EACCES...)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return None
    finally:
        os.close(fd)


def encode(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def error_response(exc: ZtError) -> dict[str, object]:
    return {"ok": False, "error": str(exc), "reason": exc.reason}


Handler = Callable[[PodAdd | PodRemove | PodList], Awaitable[dict[str, object]]]


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return int(uid)


async def _answer(line: bytes, handle: Handler) -> dict[str, object]:
    """The response to one request line: the handler's, or an error (never an exception)."""
    try:
        cmd = decode_request(line)
        if isinstance(cmd, PodAdd):
            check_netns(cmd.netns)
        return {"ok": True, **await handle(cmd)}
    except ZtError as exc:
        return error_response(exc)
    except Exception as exc:  # a bug in a handler still answers, and the server carries on
        log.exception("pod API request failed")
        return {
            "ok": False,
            "error": f"internal error: {type(exc).__name__}",
            "reason": "internal_error",
        }


async def _session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler
) -> None:
    try:
        try:
            check_peer(_peer_uid(writer))
        except PodApiForbidden as exc:
            writer.write(encode(error_response(exc)))
            await writer.drain()
            return
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # over MAX_LINE (asyncio's LimitOverrunError is a ValueError)
                too_long = BadPodRequest(f"pod request: over {MAX_LINE} bytes, expected one line")
                writer.write(encode(error_response(too_long)))
                await writer.drain()
                return
            if not line:
                return
            writer.write(encode(await _answer(line, handle)))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(path: Path, handle: Handler) -> asyncio.Server:
    """Listen on `path`, mode 0600 from its creation: bind(2) makes the file with the mode the
    umask allows, so the umask is 0o177 around it (no window where any user can connect). A stale
    socket file is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask is per process: a file another thread creates meanwhile gets a narrower mode,
        # never a wider one (and write_atomic sets its modes explicitly anyway).
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        return await asyncio.start_unix_server(
            lambda r, w: _session(r, w, handle), sock=sock, limit=MAX_LINE
        )
    except BaseException:
        sock.close()
        raise


def call(path: Path, request: Mapping[str, object], timeout: float = 30.0) -> dict[str, object]:
    """Send one request and wait for its response (blocking; for the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode(request))
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except PermissionError as exc:
        raise PodApiUnavailable(
            f"pod API at {path}: {exc.strerror} (only root may manage pods)"
        ) from None
    except OSError as exc:
        raise PodApiUnavailable(
            f"pod API at {path}: {exc.strerror or exc} (is `zt run` up?)"
        ) from None
    if not data:
        raise PodApiUnavailable(f"pod API at {path} closed without answering")
    result: dict[str, object] = json.loads(data)
    return result
