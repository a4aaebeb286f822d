"""Outbound (:15001): a captured app connection -> route() -> HBONE tunnel, plain TCP or
passthrough, every upstream socket marked and made inside the pod's netns (docs/design.md §5, §6)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zt.addr import IpAddress, SocketAddr, from_sockaddr, unmap
from zt.errors import ZtError
from zt.hbone.request import ConnectRequest, new_traceparent
from zt.identity.spiffe import SpiffeId
from zt.node.services import FLAG_NO_ROUTE, FLAG_UPSTREAM_FAILURE, STATUS_FLAGS
from zt.proxy.errors import TunnelRefused
from zt.proxy.pool import PoolKey
from zt.proxy.relay import relay, reset_tcp
from zt.proxy.splice import Splice
from zt.state import Route, RouteKind, Snapshot, Workload, own_ips, route
from zt.telemetry.connections import ConnectionInfo, ConnectionReport, Peer, failure_flag

if TYPE_CHECKING:
    from zt.node.pod import PodProxy

log = logging.getLogger("zt.node.outbound")

# own_ips() of the newest snapshot, for the node it was computed for: O(workloads) once per
# snapshot instead of once per connection (snapshots are replaced, never changed).
_own: tuple[Snapshot, str, frozenset[IpAddress]] | None = None


def _own_ips(snapshot: Snapshot, node: str) -> frozenset[IpAddress]:
    global _own  # noqa: PLW0603 - a one-entry cache, replaced whole
    if _own is None or _own[0] is not snapshot or _own[1] != node:
        _own = (snapshot, node, own_ips(snapshot, node))
    return _own[2]


def _info(
    pod: PodProxy, source: Workload, app: SocketAddr, decided: Route, destination: SocketAddr
) -> ConnectionInfo:
    snapshot = pod.services.store.current
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


@dataclass
class _Outbound:
    pod: PodProxy
    app: SocketAddr
    source: Workload
    decided: Route
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    report: ConnectionReport
    # SOCKS5 answers its client once the upstream is known to work or to have failed
    announce: Callable[[bool], None] = lambda ok: None

    def refuse(self, flags: str, error: str) -> None:
        self.announce(False)
        reset_tcp(self.writer)
        self.report.closed(flags=flags, error=error)

    async def via_hbone(self) -> None:
        decided = self.decided
        assert decided.next_hop is not None and decided.authority is not None
        key = PoolKey(
            SpiffeId.parse(self.source.identity),
            frozenset(SpiffeId.parse(i) for i in decided.expected_identities),
            decided.next_hop,
        )
        request = ConnectRequest(
            authority=(decided.authority.ip, decided.authority.port),
            forwarded_for=str(self.app),
            traceparent=new_traceparent(),
        )
        try:
            stream = await self.pod.pool.open(key, request, timeout=self.pod.services.dial_timeout)
        except TunnelRefused as exc:
            self.refuse(STATUS_FLAGS.get(exc.status, FLAG_UPSTREAM_FAILURE), str(exc))
            return
        except ZtError as exc:  # dial, TLS or peer identity failure
            self.refuse(failure_flag(exc), str(exc))
            return
        self.announce(True)
        # originator = the app: towards it is what the stream delivered, from it what it carried
        with self.report.relaying(lambda: (stream.bytes_in, stream.bytes_out)):
            result = await relay(stream, self.reader, self.writer)
        self.report.closed(result.stream_to_tcp, result.tcp_to_stream, error=_error(result.outcome))

    async def via_tcp(self) -> None:
        hop = self.decided.next_hop
        assert hop is not None
        try:
            upstream = await self.pod.net.open_connection(hop, self.pod.services.dial_timeout)
        except (OSError, TimeoutError) as exc:
            self.refuse(FLAG_UPSTREAM_FAILURE, f"{hop}: {exc}")
            return
        self.announce(True)
        spliced = Splice()
        with self.report.relaying(spliced.progress):
            result = await spliced.run((self.reader, self.writer), upstream)
        self.report.closed(result.b_to_a, result.a_to_b, error=_error(result.outcome))


def _error(outcome: str) -> str:
    return "" if outcome == "closed" else outcome


async def handle(pod: PodProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A connection captured on :15001: its original destination comes from capture."""
    with pod.services.telemetry.socket("source"):
        await _captured(pod, reader, writer)


async def _captured(
    pod: PodProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    sock = writer.get_extra_info("socket")
    app = from_sockaddr(sock.getpeername())
    try:
        orig = pod.services.capture.original_destination(sock)
    except ZtError as exc:
        log.warning("pod %s: outbound connection from %s dropped: %s", pod.uid, app, exc)
        reset_tcp(writer)
        return
    await forward(pod, reader, writer, app, SocketAddr(unmap(orig.ip), orig.port))


async def forward(
    pod: PodProxy,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    app: SocketAddr,
    destination: SocketAddr,
    *,
    announce: Callable[[bool], None] | None = None,
    listener: str = "outbound",
) -> None:
    """Route an app connection to `destination` and carry it there. `listener` (outbound,
    socks5) labels the loop guard's counter."""
    snapshot = pod.services.store.current
    source = snapshot.by_uid.get(pod.uid)
    if source is None:
        log.warning("pod %s left the config; dropping its connection to %s", pod.uid, destination)
        reset_tcp(writer)
        return
    decided = route(
        destination,
        source,
        snapshot,
        seed=random.getrandbits(32),
        own_ips=_own_ips(snapshot, pod.services.node),
        illegal_ports=pod.services.illegal_ports,
    )
    report = ConnectionReport(pod.services.telemetry, _info(pod, source, app, decided, destination))
    flow = _Outbound(pod, app, source, decided, reader, writer, report)
    if announce is not None:
        flow.announce = announce
    if decided.kind is RouteKind.REFUSED:
        if decided.loop_guard:
            pod.services.count_loop_guard(pod.uid, listener, decided.reason)
        flow.refuse(FLAG_NO_ROUTE, decided.reason)
    elif decided.kind is RouteKind.HBONE:
        await flow.via_hbone()
    else:
        await flow.via_tcp()
