"""Peer checks for the driver, built from the identity room's verifiers (docs/design.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

from zt.identity.errors import PeerCertificateMissing
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import SslConn, verify_client_peer, verify_server_peer
from zt.proxy.driver import PeerCheck


def _require(obj: SslConn | None) -> SslConn:
    if obj is None:
        raise PeerCertificateMissing("not a TLS connection: no peer certificate")
    return obj


def server_peer_check(expected: Sequence[SpiffeId]) -> PeerCheck:
    """Client side: the server's leaf must carry one of the `expected` identities."""
    wanted = tuple(expected)
    return lambda obj: verify_server_peer(_require(obj), wanted)


def client_peer_check(trust_domain: str) -> PeerCheck:
    """Server side: the client's first URI SAN must be a SPIFFE id in `trust_domain`."""
    return lambda obj: verify_client_peer(_require(obj), trust_domain)
