"""The node's configuration of zt's two flows for one pod (zt/proxy/outbound.py, inbound.py): the
decisions as pure functions over the newest snapshot, the pod's socket maker and pool, and the
telemetry each connection reports once.

Outbound (:15001, SOCKS5): `route()` (zt/state/route.py) from the pod's workload, every upstream
socket marked and made inside the pod's netns (docs/design.md §5, §6).
Inbound (:15008, :15006), docs/design.md §2: 400 when the authority is not this pod's; 401 policy
denied; only IP/port rules can allow plaintext (§1). Delivery to the app is a marked connection
from inside the pod to `<pod ip>:<port>`: from the caller's IP with original source (the default,
as ztunnel; zt/capture/origsrc.py), else from the pod's own IP, which sk_lookup leaves alone (§6).

Loop guard (zt/state/loopguard.py): a destination port zt listens on is refused before policy and
before any dial, on every path. Without it, a connection to `<pod ip>:15006` would be delivered to
`<pod ip>:15006`, which is this listener again, and so on until the node runs out of fds.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from zt.addr import HostPort, IpAddress, SocketAddr, unmap
from zt.errors import ZtError
from zt.hbone.errors import AuthorityMismatch, PolicyDenied
from zt.identity.spiffe import SpiffeId
from zt.node.podnet import PodNet
from zt.node.services import NodeServices
from zt.proxy import proxyv2
from zt.proxy.flow import NO_ROUTE, Observer, Outcome, Progress
from zt.proxy.inbound import Admission, Arrival, InboundFlow
from zt.proxy.outbound import OutboundFlow
from zt.proxy.pool import HbonePool
from zt.state import (
    Connection,
    Decision,
    Route,
    RouteKind,
    Service,
    Snapshot,
    Workload,
    authorize,
    check_inbound,
    lookup_hostname,
    own_ips,
    resolve,
    resolve_inbound,
    route,
)
from zt.state.inbound import from_gateway, inbound_upstream
from zt.state.model import TunnelProtocol
from zt.telemetry.connections import (
    ConnectionInfo,
    ConnectionReport,
    Peer,
    baggage_of,
    guess_inbound_service,
)

log = logging.getLogger("zt.node.flows")

# own_ips() of the newest snapshot, for the node it was computed for: O(workloads) once per
# snapshot instead of once per connection (snapshots are replaced, never changed).
_own: tuple[Snapshot, str, frozenset[IpAddress]] | None = None


def _own_ips(snapshot: Snapshot, node: str) -> frozenset[IpAddress]:
    global _own  # noqa: PLW0603 - a one-entry cache, replaced whole
    if _own is None or _own[0] is not snapshot or _own[1] != node:
        _own = (snapshot, node, own_ips(snapshot, node))
    return _own[2]


class Reported:
    """A flow's observer that is the connection's telemetry (access log, metrics)."""

    def __init__(self, report: ConnectionReport) -> None:
        self.report = report

    def answered(self, baggage: str | None) -> None:
        self.report.answered(baggage)

    def opened(self, progress: Progress) -> None:
        self.report.opened(progress)

    def ended(self, outcome: Outcome) -> None:
        self.report.closed(
            outcome.to_client, outcome.from_client, outcome.flags, outcome.error, outcome.policy
        )


@dataclass(frozen=True)
class PodFlows:
    """Everything one pod's flows are made of."""

    services: NodeServices
    workload: Workload
    net: PodNet
    pool: HbonePool

    # -- outbound ------------------------------------------------------------------------------
    def outbound(self, listener: str) -> OutboundFlow:
        """The flow of the pod's `listener` (outbound, socks5: the loop guard's counter label)."""

        def observe(app: SocketAddr, destination: SocketAddr, decided: Route) -> Observer:
            if decided.loop_guard:
                self.services.count_loop_guard(self.workload.uid, listener, decided.reason)
            info = self._outbound_info(app, destination, decided)
            return Reported(ConnectionReport(self.services.telemetry, info))

        return OutboundFlow(
            route=self.route,
            identity=SpiffeId.parse(self.workload.identity),
            open_tunnel=self.pool.open,
            connect=self.net.connect,
            dial_timeout=self.services.dial_timeout,
            observe=observe,
            baggage=self.baggage,
        )

    def route(self, app: SocketAddr, destination: SocketAddr) -> Route:
        snapshot = self.services.store.current
        source = snapshot.by_uid.get(self.workload.uid)
        if source is None:
            reason = f"pod {self.workload.uid} left the config"
            log.warning("%s; dropping its connection to %s", reason, destination)
            return Route(RouteKind.REFUSED, None, None, (), reason)
        return route(
            destination,
            source,
            snapshot,
            seed=random.getrandbits(32),
            own_ips=_own_ips(snapshot, self.services.node),
            illegal_ports=self.services.illegal_ports,
        )

    def baggage(self) -> str | None:
        """The pod's names as its CONNECTs and 200s carry them (zt/hbone/baggage.py), from the
        newest snapshot."""
        snapshot = self.services.store.current
        return baggage_of(self._current(snapshot)).header()

    def resolve(self, name: HostPort) -> SocketAddr:
        """A name the pod's app gave SOCKS5, resolved as the mesh's DNS would answer the pod
        (zt/state/hostnames.py); raises UnknownHostname or HostnameUnroutable."""
        snapshot = self.services.store.current
        source = self._current(snapshot)
        return resolve(snapshot, name, source, seed=random.getrandbits(32)).destination

    def _outbound_info(
        self, app: SocketAddr, destination: SocketAddr, decided: Route
    ) -> ConnectionInfo:
        snapshot = self.services.store.current
        source = self._current(snapshot)
        dst = snapshot.by_uid.get(decided.destination_workload or "")
        service = snapshot.service_by_key.get(decided.service or "")
        hbone = decided.kind is RouteKind.HBONE
        # dst.addr is the L4 hop zt dials (a :15008 for HBONE; what the app asked when refused),
        # dst.hbone_addr the CONNECT authority, as ztunnel logs them.
        hop = decided.next_hop or destination
        return ConnectionInfo(
            direction="outbound",
            src=Peer.of(source, str(app), source.identity if hbone else ""),
            dst=Peer.of(dst, str(hop), dst.identity if dst else ""),
            service=service.hostname if service else "",
            hbone_addr=str(decided.authority) if hbone and decided.authority else "",
            protocol=decided.kind.value,
            service_name=service.name if service else "",
            service_namespace=service.namespace if service else "",
        )

    # -- inbound -------------------------------------------------------------------------------
    def inbound(self) -> InboundFlow:
        """The flow of the pod's :15008 (CONNECTs) and :15006 (plaintext)."""
        return InboundFlow(
            self.admit,
            connect=self.net.connect,
            dial_timeout=self.services.dial_timeout,
            observe=self._observe_inbound,
            track=self._track,
            baggage=self.baggage,
            connect_from=self.net.connect_from if self.services.original_source else None,
        )

    def admit(self, arrival: Arrival) -> Admission:
        """A hostname authority resolved to this pod (zt/state/hostnames.py), then the loop guard
        on where it lands, then (HBONE) the authority must be this pod's or name it as its
        waypoint and the pod's application tunnel may move the port (zt/state/inbound.py), then
        policy on where it is delivered (ztunnel's RBAC sees the upstream address too)."""
        path = "hbone" if arrival.hbone else "plaintext"
        snapshot = self.services.store.current
        # the pod's entry as the newest snapshot has it: an edit in place (its waypoint role,
        # its application tunnel) applies to the next connection without a pod restart
        pod = self._current(snapshot)
        reached = unmap(arrival.local.ip) if arrival.local is not None else None
        target, service = arrival.target, None
        if isinstance(target, HostPort):
            try:
                resolved = resolve_inbound(snapshot, target, pod, reached)
            except ZtError as exc:
                return Admission.deny(exc, NO_ROUTE)
            target, service = resolved.destination, resolved.service
        looping = check_inbound(target, self.services.illegal_ports)
        if looping is not None:  # refuse, never dial: the dial would come straight back here
            self.services.count_loop_guard(self.workload.uid, path, str(looping))
            return Admission.deny(looping.error(), NO_ROUTE)
        if arrival.source is None:
            return Admission.deny(AuthorityMismatch("the client's address is unknown"), NO_ROUTE)
        preamble, dial = b"", None
        if arrival.hbone:
            try:
                target, dial, preamble = self._deliver(arrival, pod, target, service, reached)
            except ZtError as exc:
                return Admission.deny(exc, NO_ROUTE)
        identity = str(arrival.identity) if arrival.identity is not None else None
        conn = Connection(arrival.source.ip, target, identity, pod.network)
        decision = authorize(conn, snapshot)
        if not decision.allowed:
            self._deny_log(conn, decision)  # the node's DENY line: the flow logs no other
            denied = Admission.deny(PolicyDenied(decision.reason), policy=decision.policy or "")
            return dataclasses.replace(denied, logged=True)
        return Admission.allow(decision.policy or "", conn, dial or target, preamble)

    def _deliver(
        self,
        arrival: Arrival,
        pod: Workload,
        target: SocketAddr,
        service: Service | None,
        reached: IpAddress | None,
    ) -> tuple[SocketAddr, SocketAddr, bytes]:
        """Where a tunnel to `target` is delivered on this pod (the address policy sees, the one
        zt connects to) and the PROXY header ahead of it; raises AuthorityMismatch (400) or the
        loop guard's error."""
        snapshot = self.services.store.current
        found = inbound_upstream(
            snapshot, pod, reached, target, authority=arrival.target, service=service
        )
        if isinstance(found, str):
            raise AuthorityMismatch(found)
        looping = check_inbound(found.dial, self.services.illegal_ports)
        if looping is not None:
            self.services.count_loop_guard(pod.uid, "hbone", str(looping))
            raise looping.error()
        if found.protocol is not TunnelProtocol.PROXY or found.proxy_target is None:
            return found.dial, found.connect_to, b""
        assert arrival.source is not None
        identity = str(arrival.identity) if arrival.identity is not None else None
        source = SocketAddr(unmap(arrival.source.ip), arrival.source.port)
        header = proxyv2.encode(source, found.proxy_target, identity)
        return found.dial, found.connect_to, header

    def _current(self, snapshot: Snapshot) -> Workload:
        """This pod's workload in `snapshot` (the one it started with if it has left)."""
        return snapshot.by_uid.get(self.workload.uid, self.workload)

    def _deny_log(self, conn: Connection, decision: Decision) -> None:
        log.info(
            "pod %s: DENY %s (%s) -> %s: %s",
            self.workload.uid,
            conn.src_ip,
            conn.src_identity or "no identity",
            conn.dst,
            decision.reason,
        )

    def _track(self, admission: Admission, revoke: Callable[[str], None]) -> Callable[[], None]:
        if admission.connection is None:
            return lambda: None
        tracker = self.services.tracker
        key = tracker.add(self.workload.uid, admission.connection, lambda d: revoke(d.reason))
        return lambda: tracker.remove(key)

    def _observe_inbound(self, arrival: Arrival) -> Observer:
        snapshot = self.services.store.current
        identity = str(arrival.identity) if arrival.identity is not None else ""
        request = arrival.request
        # a source zt's state does not hold is named by the baggage it sent (ztunnel's
        # derived_source); plaintext sends none
        baggage = request.baggage if request is not None else None
        forwarded = request.forwarded_network if request is not None else None
        if arrival.source is not None:
            # through a gateway from another network, the source address names nobody here
            gateway = from_gateway(forwarded, self.workload.network)
            known = (
                None if gateway else snapshot.workload_at(self.workload.network, arrival.source.ip)
            )
            src = Peer.of(known, str(arrival.source), identity, baggage)
        else:
            src = Peer.of(None, "", identity, baggage)
        workload = self.workload
        if isinstance(arrival.target, HostPort):  # the CONNECT named its service
            service = lookup_hostname(snapshot, arrival.target.host, workload.namespace)
        else:
            for_host = request.forwarded_host if request is not None else None
            service = guess_inbound_service(
                workload, arrival.target.port, snapshot.service_by_key, for_host
            )
        # dst.addr: where the connection reached zt (a :15008 for HBONE); dst.hbone_addr: the
        # CONNECT authority (ztunnel logs inbound tunnels so, "for consistency with outbound").
        local = arrival.local if arrival.hbone else arrival.target
        info = ConnectionInfo(
            direction="inbound",
            src=src,
            dst=Peer.of(workload, str(local) if local else "", workload.identity),
            service=service.hostname if service else "",
            hbone_addr=str(arrival.target) if arrival.hbone else "",
            protocol="hbone" if arrival.hbone else "tcp",
            service_name=service.name if service else "",
            service_namespace=service.namespace if service else "",
        )
        return Reported(ConnectionReport(self.services.telemetry, info))
