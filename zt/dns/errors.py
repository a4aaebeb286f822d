"""Failures of the DNS proxy, deriving from zt.errors (docs/dns.md)."""

from __future__ import annotations

from zt.errors import UsageError, ZtError


class DnsError(ZtError):
    """Base of DNS proxy failures."""

    reason = "dns_error"


class UpstreamError(DnsError):
    """One upstream resolver gave no usable answer (timeout, refused, bad reply)."""

    reason = "dns_upstream"

    def __init__(self, upstream: str, why: str) -> None:
        self.upstream = upstream
        self.why = why
        super().__init__(f"upstream {upstream}: {why}")


class UpstreamConfigError(DnsError, UsageError):
    """The upstream resolvers given (or found in resolv.conf) are not usable."""

    reason = "dns_upstream_config"


class DnsBindError(DnsError):
    """A pod's DNS proxy cannot have its sockets: the port is taken in the pod (an app bound
    15053 first) or the pod's namespace refused a socket. That pod goes without DNS proxying."""

    reason = "dns_bind"
