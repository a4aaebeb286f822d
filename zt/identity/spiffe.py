"""SPIFFE workload ids of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Character rules are those of the SPIFFE ID standard (spiffe/standards, SPIFFE-ID.md):
§2.1 "Trust domain names ... MUST contain only lowercase letters, numbers, dots, dashes, and
underscores"; §2.2 path segments "MUST contain only letters, numbers, dots, dashes, and underscores"
and "MUST NOT be dot-segments"; §2.3 "Maximum SPIFFE ID Length ... 2048 bytes".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zt.identity.errors import InvalidSpiffeId, InvalidTrustDomain

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


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
