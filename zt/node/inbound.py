"""Inbound: HBONE tunnels (:15008) and plaintext (:15006) to a pod's applications.

docs/design.md §2: 200 once policy passed **and** the upstream socket is connected; 400 malformed
request or authority IP ≠ the pod the connection reached; 401 policy denied; 503 unknown destination
or upstream unreachable (10 s dial timeout). After 200, failures become RST_STREAM.
Plaintext (§1): "non-HBONE connections to the pod; only IP/port policy rules can allow them".
Delivery to the app is a marked connection from inside the pod to `<pod ip>:<port>`; its source is
the pod's own IP, which sk_lookup leaves alone (§6).

Loop guard (zt/state/loopguard.py): a destination port zt listens on is refused before policy and
before any dial, on both paths. Without it, a connection to `<pod ip>:15006` would be delivered to
`<pod ip>:15006`, which is this listener again, and so on until the node runs out of fds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from zt.addr import SocketAddr, from_sockaddr, unmap
from zt.errors import H2_CONNECT_ERROR, ZtError
from zt.hbone.errors import AuthorityMismatch, PolicyDenied, UpstreamUnreachable
from zt.node.services import (
    FLAG_DENIED,
    FLAG_DRAINED,
    FLAG_NO_ROUTE,
    FLAG_OK,
    FLAG_REVOKED,
    FLAG_UPSTREAM_FAILURE,
)
from zt.proxy.errors import StreamResetError
from zt.proxy.relay import relay, reset_tcp
from zt.proxy.splice import Splice
from zt.proxy.stream import HboneStream
from zt.state import Connection, Decision, authorize, check_inbound
from zt.telemetry.connections import ConnectionInfo, ConnectionReport, Peer, guess_inbound_service

if TYPE_CHECKING:
    from zt.node.pod import PodProxy

log = logging.getLogger("zt.node.inbound")


def _source_peer(pod: PodProxy, addr: SocketAddr, identity: str) -> Peer:
    known = pod.services.store.current.workload_at(pod.workload.network, addr.ip)
    return Peer.of(known, str(addr), identity)


def _info(pod: PodProxy, src: Peer, local: str, target: SocketAddr, hbone: bool) -> ConnectionInfo:
    """dst.addr: where the connection reached zt (a :15008 for HBONE); dst.hbone_addr: the
    CONNECT authority (ztunnel logs inbound tunnels so, "for consistency with outbound")."""
    workload = pod.workload
    service = guess_inbound_service(
        workload, target.port, pod.services.store.current.service_by_key
    )
    return ConnectionInfo(
        direction="inbound",
        src=src,
        dst=Peer.of(workload, local, workload.identity),
        service=service.hostname if service else "",
        hbone_addr=str(target) if hbone else "",
        protocol="hbone" if hbone else "tcp",
        service_name=service.name if service else "",
        service_namespace=service.namespace if service else "",
    )


def _deny_log(pod: PodProxy, conn: Connection, decision: Decision) -> None:
    log.info(
        "pod %s: DENY %s (%s) -> %s: %s",
        pod.uid,
        conn.src_ip,
        conn.src_identity or "no identity",
        conn.dst,
        decision.reason,
    )


class _Closer:
    """What the conntrack calls when a policy change revokes a live connection."""

    def __init__(self, writer: asyncio.StreamWriter, stream: HboneStream | None = None) -> None:
        self.writer = writer
        self.stream = stream
        self.revoked: Decision | None = None

    def __call__(self, decision: Decision) -> None:
        self.revoked = decision
        if self.stream is not None:
            self.stream.reset(H2_CONNECT_ERROR)
        reset_tcp(self.writer)


async def hbone_tunnel(pod: PodProxy, stream: HboneStream) -> None:
    """One CONNECT on the pod's :15008: check, dial the app, answer, relay, report."""
    workload = pod.workload
    peer_id = str(stream.driver.peer)
    transport = stream.driver.transport
    peer_addr = from_sockaddr(transport.get_extra_info("peername")) if transport else None
    ip, port = stream.request.authority
    target = SocketAddr(unmap(ip), port)
    local = str(from_sockaddr(transport.get_extra_info("sockname"))) if transport else ""
    src = _source_peer(pod, peer_addr, peer_id) if peer_addr else Peer(identity=peer_id)
    report = ConnectionReport(pod.services.telemetry, _info(pod, src, local, target, hbone=True))
    pod.services.telemetry.hbone_socket(stream.driver, stream.driver.closed)
    looping = check_inbound(target, pod.services.illegal_ports)
    if looping is not None:
        pod.services.count_loop_guard(pod.uid, "hbone", str(looping))
        _refuse(stream, looping.error())
        report.closed(flags=FLAG_NO_ROUTE, error=str(looping))
        return
    if target.ip not in workload.ips or peer_addr is None:
        _refuse(stream, AuthorityMismatch(f"{target} is not an address of pod {workload.uid}"))
        report.closed(flags=FLAG_NO_ROUTE, error=f"authority {target} is not this pod")
        return
    conn = Connection(peer_addr.ip, target, peer_id, workload.network)
    decision = authorize(conn, pod.services.store.current)
    if not decision.allowed:
        _deny_log(pod, conn, decision)
        _refuse(stream, PolicyDenied(decision.reason))
        report.closed(flags=FLAG_DENIED, error=decision.reason, policy=decision.policy or "")
        return
    try:
        reader, writer = await pod.net.open_connection(target, pod.services.dial_timeout)
    except (OSError, TimeoutError) as exc:
        _refuse(stream, UpstreamUnreachable(f"{target}: {exc}"))
        report.closed(flags=FLAG_UPSTREAM_FAILURE, error=f"{target}: {exc}")
        return
    except asyncio.CancelledError:  # the client reset the stream before our answer
        report.closed(flags=FLAG_DRAINED, error="client reset the stream during the dial")
        raise
    try:
        stream.driver.respond(stream, 200)  # only now: the app's socket is connected
    except (StreamResetError, ZtError):
        writer.close()
        report.closed(flags=FLAG_DRAINED, error="client went away during the dial")
        return
    closer = _Closer(writer, stream)
    key = pod.services.tracker.add(pod.uid, conn, closer)
    try:
        # originator = the HBONE peer: towards it is what the stream carried, from it what it
        # delivered to the app
        with report.relaying(lambda: (stream.bytes_out, stream.bytes_in)):
            result = await relay(stream, reader, writer)
    finally:
        pod.services.tracker.remove(key)
    flags, error = _ending(closer, result.outcome)
    report.closed(result.tcp_to_stream, result.stream_to_tcp, flags, error, decision.policy or "")


def _refuse(stream: HboneStream, error: ZtError) -> None:
    """Answer a CONNECT with the error's status (its class carries it) and reason."""
    if stream.was_reset is None:
        with contextlib.suppress(StreamResetError, ZtError):  # the client gave up already
            stream.driver.respond(stream, error.http_status, error.reason)


def _ending(closer: _Closer, outcome: str) -> tuple[str, str]:
    if closer.revoked is not None:
        return FLAG_REVOKED, f"revoked by policy change: {closer.revoked.reason}"
    return FLAG_OK, "" if outcome == "closed" else outcome


async def plaintext(
    pod: PodProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A non-HBONE connection to the pod (:15006): IP/port policy only; deny closes it."""
    with pod.services.telemetry.socket("destination"):
        await _plaintext(pod, reader, writer)


async def _plaintext(
    pod: PodProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    sock = writer.get_extra_info("socket")
    source = from_sockaddr(sock.getpeername())
    target = from_sockaddr(sock.getsockname())  # sk_lookup does not rewrite: the original dst
    workload = pod.workload
    src = _source_peer(pod, source, "")
    report = ConnectionReport(pod.services.telemetry, _info(pod, src, str(target), target, False))
    looping = check_inbound(target, pod.services.illegal_ports)
    if looping is not None:  # reset, never dial: the dial would come straight back here
        pod.services.count_loop_guard(pod.uid, "plaintext", str(looping))
        reset_tcp(writer)
        report.closed(flags=FLAG_NO_ROUTE, error=str(looping))
        return
    conn = Connection(source.ip, target, None, workload.network)
    decision = authorize(conn, pod.services.store.current)
    if not decision.allowed:
        _deny_log(pod, conn, decision)
        reset_tcp(writer)
        report.closed(flags=FLAG_DENIED, error=decision.reason, policy=decision.policy or "")
        return
    try:
        upstream = await pod.net.open_connection(target, pod.services.dial_timeout)
    except (OSError, TimeoutError) as exc:
        reset_tcp(writer)
        report.closed(flags=FLAG_UPSTREAM_FAILURE, error=f"{target}: {exc}")
        return
    closer = _Closer(writer)
    key = pod.services.tracker.add(pod.uid, conn, closer)
    spliced = Splice()
    try:
        with report.relaying(spliced.progress):
            result = await spliced.run((reader, writer), upstream)
    finally:
        pod.services.tracker.remove(key)
    if closer.revoked is not None:
        reset_tcp(upstream[1])
    flags, error = _ending(closer, result.outcome)
    report.closed(result.b_to_a, result.a_to_b, flags, error, decision.policy or "")
