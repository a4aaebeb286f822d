"""SPIFFE workload ids of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Character rules are those of the SPIFFE ID standard (spiffe/standards, SPIFFE-ID.md):
§2.1 "Trust domain names ... MUST contain only lowercase letters, numbers, dots, dashes, and
underscores"; §2.2 path segments "MUST contain only letters, numbers, dots, dashes, and underscores"
and "MUST NOT be dot-segments"; §2.3 "Maximum SPIFFE ID Length ... 2048 bytes".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zt.errors import UsageError
from zt.identity.errors import InvalidSpiffeId, InvalidTrustDomain

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# What a `prefix*` / `*suffix` principal pattern may hold around its `*`: the characters of a
# principal (trust domain, segments and the '/' between them).
_PATTERN_PART = re.compile(r"[A-Za-z0-9._/-]+")
PRINCIPAL_FORM = (
    "<trust-domain>/ns/<namespace>/sa/<service-account> without spiffe://, "
    "or a pattern: '*', 'prefix*', '*suffix'"
)


def _check_trust_domain(value: str, text: object) -> None:
    if not _TRUST_DOMAIN.fullmatch(value):
        raise InvalidSpiffeId(
            text, f"trust domain {value!r} must be lowercase letters, digits, '.', '-', '_'"
        )


def trust_domain(value: str) -> str:
    """Validate a bare trust domain name (as `zt ca init --trust-domain` takes it)."""
    if not isinstance(value, str) or not _TRUST_DOMAIN.fullmatch(value):
        raise InvalidTrustDomain(value)
    return value


def _check_segment(name: str, value: str, text: object) -> None:
    if not _SEGMENT.fullmatch(value) or value in {".", ".."}:
        raise InvalidSpiffeId(
            text, f"{name} {value!r} must be letters, digits, '.', '-', '_' and not '.' or '..'"
        )


def segment(value: str, *, field: str) -> str:
    """Validate a name that becomes one SPIFFE path segment (a node name: sa/node-<name>)."""
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value) or value in {".", ".."}:
        raise UsageError(
            f"{field}: got {value!r}, expected letters, digits, '.', '-', '_' (not '.' or '..')"
        )
    return value


class InvalidPrincipal(UsageError):
    """A policy principal that is neither `td/ns/<ns>/sa/<sa>` nor a `*` pattern."""

    reason = "invalid_principal"

    def __init__(self, value: object, expected: str) -> None:
        self.value = value
        self.expected = expected
        super().__init__(f"principal: got {value!r}, expected {expected}")


def principal_pattern(value: str) -> str:
    """Validate an authorization policy principal as Istio writes it: `td/ns/<ns>/sa/<sa>` (no
    scheme), or a match pattern `*`, `prefix*`, `*suffix`. Peers are compared without
    `spiffe://`, so a principal written with the scheme could never match: it is refused."""
    if not isinstance(value, str):
        raise InvalidPrincipal(value, PRINCIPAL_FORM)
    if value.startswith(SCHEME):
        bare = value[len(SCHEME) :]
        raise InvalidPrincipal(value, f"{PRINCIPAL_FORM} (drop 'spiffe://': {bare!r})")
    if value == "*":
        return value
    inner = value[:-1] if value.endswith("*") else value[1:] if value.startswith("*") else None
    if inner is not None:
        if not _PATTERN_PART.fullmatch(inner):
            raise InvalidPrincipal(value, PRINCIPAL_FORM)
        return value
    try:
        SpiffeId.from_principal(value)
    except InvalidSpiffeId as exc:
        raise InvalidPrincipal(value, f"{PRINCIPAL_FORM} ({exc.problem})") from None
    return value


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A Kubernetes-style workload identity. Construction validates every part."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain, self._text())
        _check_segment("namespace", self.namespace, self._text())
        _check_segment("service account", self.service_account, self._text())
        if len(self._text().encode()) > MAX_LENGTH:
            raise InvalidSpiffeId(self._text(), f"longer than {MAX_LENGTH} bytes")

    def _text(self) -> str:
        return f"{SCHEME}{self.principal}"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse the URI form; the error names the value and the expected form."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(text, "not a string")
        if not text.startswith(SCHEME):
            raise InvalidSpiffeId(text, "must start with 'spiffe://' (lowercase)")
        if len(text.encode()) > MAX_LENGTH:
            raise InvalidSpiffeId(text, f"longer than {MAX_LENGTH} bytes")
        parts = text[len(SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeId(text, "path must be exactly /ns/<namespace>/sa/<service-account>")
        return cls(parts[0], parts[2], parts[4])

    @classmethod
    def from_principal(cls, principal: str) -> SpiffeId:
        """Parse the policy form `td/ns/x/sa/y` (no scheme)."""
        return cls.parse(SCHEME + principal)

    def __str__(self) -> str:
        return self._text()

    @property
    def principal(self) -> str:
        """`td/ns/x/sa/y`: how authorization policies write principals (no `spiffe://`)."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"
