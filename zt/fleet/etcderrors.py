"""etcd failures as zt errors: what the fleet client raises instead of httpx or JSON exceptions.

The client (zt/fleet/etcd.py) translates every transport error and every error document of etcd's
JSON gateway into one of these, once; code above it sees only these classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from zt.errors import ZtError


class EtcdError(ZtError):
    """Base of every etcd failure."""

    http_status = 503
    reason = "etcd_error"
    exit_code = 1


class EtcdUnavailable(EtcdError):
    """No endpoint answered (or a watch stream broke). Lists each endpoint tried and why."""

    reason = "etcd_unavailable"

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = tuple(failures)
        detail = "; ".join(f"{endpoint}: {why}" for endpoint, why in self.failures)
        super().__init__(f"etcd unavailable ({detail or 'no endpoints'})")


class EtcdAuthFailed(EtcdError):
    """etcd refused the user name/password (or wanted credentials and got none)."""

    reason = "etcd_auth_failed"
    exit_code = 2

    def __init__(self, user: str | None, message: str) -> None:
        self.user = user
        who = f"user {user!r}" if user else "no user given (--etcd-user)"
        super().__init__(f"etcd authentication failed for {who}: {message}")


class EtcdAuthChurn(EtcdUnavailable):
    """etcd kept answering "revision of auth store is old": its users or roles changed after every
    fresh token (a signer admitting many joins at once). The credentials are fine: like an
    unreachable etcd, this passes, and whoever retries or falls back on unavailability does so."""

    reason = "etcd_auth_churn"

    def __init__(self, user: str | None, attempts: int) -> None:
        self.user = user
        why = (
            f"etcd's users kept changing: {attempts} fresh tokens for user {user!r} were each "
            "already stale (many joins at once?); the credentials were accepted, try again"
        )
        super().__init__([("auth", why)])
        self.args = (why,)

    def __str__(self) -> str:
        return str(self.args[0])


class EtcdPermissionDenied(EtcdError):
    """The authenticated user has no permission for the key."""

    reason = "etcd_permission_denied"
    exit_code = 2

    def __init__(self, user: str | None, key: bytes, operation: str) -> None:
        self.user = user
        self.key = key
        self.operation = operation
        shown = key.decode("utf-8", "backslashreplace")
        super().__init__(f"etcd permission denied: user {user!r} may not {operation} key {shown!r}")


class EtcdCompacted(EtcdError):
    """The requested revision was compacted away; the caller must re-list from the current state.
    `compact_revision` is the oldest revision still available (0 when etcd did not say)."""

    reason = "etcd_compacted"

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd revision compacted (oldest available: {compact_revision})")


class EtcdBadAnswer(EtcdError):
    """etcd (or something in front of it) answered a document the client cannot read."""

    reason = "etcd_bad_answer"

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        shown = repr(value)[:120]
        super().__init__(
            f"etcd answered a malformed document: {field}: got {shown}, expected {expected}"
        )


class EtcdRequestError(EtcdError):
    """etcd answered with an error (gRPC status code + message)."""

    reason = "etcd_request_error"

    def __init__(self, code: int, message: str, *, endpoint: str = "") -> None:
        self.code = code
        self.message = message
        self.endpoint = endpoint
        where = f" from {endpoint}" if endpoint else ""
        super().__init__(f"etcd error{where}: code {code}: {message}")


# --- translation of gateway error answers (pure; used by zt/fleet/etcd.py and etcdwatch.py) ---

# gRPC status codes etcd answers with.
CODE_PERMISSION_DENIED = 7
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16

# etcd answers these when the member cannot serve right now; another member may.
_RETRY_ELSEWHERE = ("no leader", "leader changed", "request timed out", "not capable")


STALE_AUTH = "revision of auth store is old"
_REAUTH = ("invalid auth token", STALE_AUTH)


# "revision of auth store is old" is answered again and again while a signer admits many joins at
# once (each admission adds a user): this many fresh tokens, about REAUTH_BACKOFF * 2**n apart,
# with jitter so that clients refused together do not log in again together (0.05 + 0.1 + 0.2 +
# 0.4 + 0.8 s on average). "invalid auth token" (an expired or foreign token) gets one retry.
REAUTH_ATTEMPTS = 6
REAUTH_BACKOFF = 0.05


def reauth_refusal(message: str, attempt: int, user: str | None) -> EtcdError | None:
    """After `attempt` (0-based) ended in Reauth(message): the error to raise, or None to log in
    again and retry."""
    stale = STALE_AUTH in message
    if attempt + 1 < (REAUTH_ATTEMPTS if stale else 2):
        return None
    if stale:
        return EtcdAuthChurn(user, attempt + 1)
    return EtcdAuthFailed(user, message.removeprefix("etcdserver: "))


def reauth_delay(message: str, attempt: int, jitter: float) -> float:
    """Seconds to wait before logging in again; `jitter` is uniform in [0, 1)."""
    return REAUTH_BACKOFF * 2**attempt * (0.5 + jitter) if STALE_AUTH in message else 0.0


class Unreachable(Exception):
    """Internal (client): this endpoint did not answer (or cannot serve); try the next one."""


class Reauth(Exception):
    """Internal (client): the endpoint rejected our token (or wants one); authenticate again."""


def error_of(doc: Mapping[str, object], status: int) -> tuple[int, str]:
    """The gRPC code and message of an error answer (a code that is not a number counts as 0)."""
    message = str(doc.get("message") or doc.get("error") or f"HTTP {status}")
    code = str(doc.get("code") or 0)
    return (int(code) if code.isdigit() else 0), message


def classify(
    code: int, message: str, *, user: str | None, key: bytes, operation: str, endpoint: str
) -> Exception:
    """The exception for an etcd error answer: pure, shared by unary calls and watches."""
    # "revision of auth store is old": a user or role changed after our token was issued (the
    # signer adds users at every join); a fresh token carries the new revision, as etcd's own Go
    # client does it
    if any(s in message for s in _REAUTH) or (user and "user name is empty" in message):
        return Reauth(message)
    if code == CODE_UNAVAILABLE or any(s in message for s in _RETRY_ELSEWHERE):
        return Unreachable(message)
    if code == CODE_PERMISSION_DENIED or "permission denied" in message:
        return EtcdPermissionDenied(user, key, operation)
    if "invalid user ID or password" in message or "user name is empty" in message:
        return EtcdAuthFailed(user, message.removeprefix("etcdserver: "))
    if "required revision has been compacted" in message:
        return EtcdCompacted(0)
    return EtcdRequestError(code, message, endpoint=endpoint)
