"""The standalone HBONE server's admission: the loop guard and the operator's allow-list.

`zt hbone serve` forwards each tunnel to its `:authority`, so without a guard any authenticated peer
could make it dial itself (a CONNECT to its own listener nests without end: each level costs two
sockets and a TLS connection) or a local service no peer should reach (127.0.0.1:15000, the node's
admin). The decision is `StandaloneGuard.check` (zt/state/loopguard.py, pure); this module is its
`admit` function for the inbound flow (zt/proxy/inbound.py): it knows the bound address only once
the server listens, and answers "is this address one of this host's?" with a bind probe.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import Counter

from zt.addr import IpAddress, SocketAddr, unmap
from zt.errors import ZtError
from zt.hbone.errors import UpstreamUnreachable
from zt.proxy.flow import NO_ROUTE
from zt.proxy.inbound import Admission, Arrival
from zt.state.hostnames import UnknownHostname
from zt.state.loopguard import DEFAULT_ILLEGAL_PORTS, AllowList, StandaloneGuard

log = logging.getLogger("zt.proxy.guard")


def is_local_address(ip: IpAddress) -> bool:
    """Whether `ip` is an address of this host: binding to it works only then (EADDRNOTAVAIL
    otherwise; without IP_FREEBIND and with net.ipv4.ip_nonlocal_bind=0, the defaults).
    A UDP socket bound to port 0 costs no TCP port and is closed at once."""
    plain = unmap(ip)
    if plain.is_loopback or plain.is_unspecified:
        return True
    family = socket.AF_INET6 if plain.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(plain), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


class StandaloneAdmission:
    """`InboundFlow(StandaloneAdmission(allow))`; call `bind(bound)` with what
    `server.start()` returned. Until then every CONNECT is refused (fail closed)."""

    def __init__(
        self, allow: AllowList, *, illegal_ports: frozenset[int] = DEFAULT_ILLEGAL_PORTS
    ) -> None:
        self.allow = allow
        self.illegal_ports = illegal_ports
        self.guard: StandaloneGuard | None = None
        self.refused: Counter[str] = Counter()  # by reason: loop_guard, destination_not_allowed

    def bind(self, listening: SocketAddr) -> None:
        self.guard = StandaloneGuard(listening, self.allow, self.illegal_ports)

    def __call__(self, arrival: Arrival) -> Admission:
        destination = arrival.target
        if not isinstance(destination, SocketAddr):  # no mesh here to resolve a name with
            return self._deny(
                arrival, UnknownHostname(f"{destination}: this server dials IPs only")
            )
        if self.guard is None:
            return self._deny(
                arrival, UpstreamUnreachable(f"{destination}: server not listening yet")
            )
        refusal = self.guard.check(destination, is_local_address)
        if refusal is None:
            return Admission.allow()
        return self._deny(arrival, refusal.error())

    def _deny(self, arrival: Arrival, error: ZtError) -> Admission:
        # counted here; the flow logs the refusal with the client's address (zt/proxy/inbound.py)
        self.refused[error.reason] += 1
        log.debug("CONNECT from %s refused (%s): %s", arrival.identity, error.reason, error)
        return Admission.deny(error, NO_ROUTE)
