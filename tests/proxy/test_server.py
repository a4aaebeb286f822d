"""The zt HBONE server over loopback: statuses, admission, dial timeout, mTLS refusals, drain."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.proxy.helpers import (
    CLIENT_ID,
    LOOPBACK,
    TD,
    Pki,
    closed_port,
    echo_handler,
    run,
    tcp_server,
    zt_dial,
    zt_server,
)
from zt.addr import SocketAddr
from zt.hbone.errors import AuthorityMismatch, PolicyDenied
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.ca import CertificateAuthority
from zt.identity.certs import WorkloadCert
from zt.identity.errors import (
    ForeignTrustDomain,
    PeerCertificateUntrusted,
    PeerIdentityMismatch,
    TlsError,
)
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import client_context, server_context
from zt.proxy.client import dial, open_tunnel
from zt.proxy.errors import ConnectionLost, StreamResetError, TunnelRefused
from zt.proxy.flow import connect_direct
from zt.proxy.inbound import Admission, Arrival, InboundFlow
from zt.proxy.server import HboneServer
from zt.proxy.stream import HboneStream
from zt.proxy.tls import client_peer_check, server_peer_check

LOCAL = SocketAddr.parse("127.0.0.1:9")


def _request(port: int) -> ConnectRequest:
    return ConnectRequest(SocketAddr(LOCAL.ip, port))


def test_closed_destination_port_answers_503(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, _request(closed_port()))
            assert info.value.status == 503
            assert info.value.detail == "upstream_unreachable"
            assert server.tunnels == 0
            assert driver.usable  # a refused tunnel costs one stream, not the connection
            driver.close()

    run(body())


def test_admission_hook_sees_peer_and_request_and_can_deny_401(pki: Pki) -> None:
    seen: list[Arrival] = []

    def deny(arrival: Arrival) -> Admission:
        seen.append(arrival)
        return Admission.deny(PolicyDenied("no rule allows it"))

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki, admission=deny) as (_, addr):
            driver = await zt_dial(pki, addr)
            request = ConnectRequest(SocketAddr(echo.ip, echo.port), forwarded_for="10.0.0.1:4242")
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, request)
            assert (info.value.status, info.value.detail) == (401, "policy_denied")
            [arrival] = seen
            assert (arrival.identity, arrival.target) == (CLIENT_ID, request.authority)
            assert arrival.source is not None and str(arrival.source.ip) == "127.0.0.1"
            driver.close()

    run(body())


def test_200_only_once_the_upstream_is_connected(pki: Pki) -> None:
    release = asyncio.Event()
    dialed: list[float] = []

    async def slow_dialer(target: SocketAddr, timeout: float) -> socket.socket:
        await release.wait()
        dialed.append(time.monotonic())
        return await connect_direct(target, timeout)

    async def body() -> None:
        async with tcp_server() as echo:
            server = HboneServer(
                server_context(pki.server),
                peer_check=client_peer_check(TD),
                flow=InboundFlow(connect=slow_dialer),
            )
            addr = await server.start(LOOPBACK)
            try:
                driver = await zt_dial(pki, addr)
                stream = driver.open_stream(ConnectRequest(SocketAddr(echo.ip, echo.port)))
                await asyncio.sleep(0.3)
                assert not stream.response.done(), "answered before the upstream was dialed"
                release.set()
                status, _ = await asyncio.wait_for(stream.response, 5)
                assert status == 200
                assert dialed
                await stream.write(b"ping")
                stream.write_eof()
                assert await stream.read() == b"ping"
                driver.close()
            finally:
                await server.shutdown(0.5)

    run(body())


def test_dial_timeout_answers_503(pki: Pki) -> None:
    async def never(target: SocketAddr, timeout: float) -> socket.socket:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def body() -> None:
        server = HboneServer(
            server_context(pki.server),
            peer_check=client_peer_check(TD),
            flow=InboundFlow(connect=never, dial_timeout=0.3),
        )
        addr = await server.start(LOOPBACK)
        try:
            driver = await zt_dial(pki, addr)
            started = time.monotonic()
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, _request(80))
            assert info.value.status == 503
            assert 0.25 <= time.monotonic() - started < 3
            driver.close()
        finally:
            await server.shutdown(0.5)

    run(body())


def test_client_without_certificate_is_refused(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            ctx = client_context(pki.client)
            bare = type(ctx)(ctx.protocol)  # same defaults, but no certificate loaded
            bare.check_hostname = False
            bare.load_verify_locations(cadata=pki.ca.roots_pem.decode())
            bare.set_alpn_protocols(["h2"])
            with pytest.raises(TlsError):
                await dial(addr, bare, peer_check=server_peer_check([pki.server.identity]))
            await asyncio.sleep(0.05)
            assert server.connections_accepted == 0

    run(body())


def test_client_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca", TD)
    stranger = other.issue(CLIENT_ID, now=time.time())
    # The stranger trusts our roots (so it would accept the server) but its own leaf is foreign.
    stranger = WorkloadCert.from_pem(stranger.cert_pem, stranger.key_pem, pki.ca.roots_pem)

    async def body() -> None:
        async with zt_server(pki) as (server, addr):
            with pytest.raises(TlsError):
                await dial(
                    addr,
                    client_context(stranger),
                    peer_check=server_peer_check([pki.server.identity]),
                )
            assert server.connections_accepted == 0

    run(body())


def test_client_from_foreign_trust_domain_is_refused(pki: Pki, tmp_path: Path) -> None:
    """A chain the server trusts, but an identity outside its trust domain: refused after the
    handshake by the peer check (ForeignTrustDomain), so no stream is ever served."""
    foreign_ca = CertificateAuthority.init(tmp_path / "foreign", "other.td")
    roots = pki.ca.roots_pem + foreign_ca.roots_pem
    foreigner = foreign_ca.issue(SpiffeId("other.td", "default", "client"), now=time.time())
    foreigner = WorkloadCert.from_pem(foreigner.cert_pem, foreigner.key_pem, roots)
    server_cert = WorkloadCert.from_pem(pki.server.cert_pem, pki.server.key_pem, roots)
    refused: list[BaseException] = []

    def check(obj: ssl.SSLObject | ssl.SSLSocket | None) -> SpiffeId:
        try:
            return client_peer_check(TD)(obj)
        except ForeignTrustDomain as exc:
            refused.append(exc)
            raise

    async def body() -> None:
        server = HboneServer(server_context(server_cert), peer_check=check)
        addr = await server.start(LOOPBACK)
        try:
            with pytest.raises((ConnectionLost, TlsError)):
                await dial(
                    addr,
                    client_context(foreigner),
                    peer_check=server_peer_check([pki.server.identity]),
                )
            assert len(refused) == 1
            assert server.connections_accepted == 0
        finally:
            await server.shutdown(0.5)

    run(body())


def test_zt_client_refuses_server_of_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca", TD)
    impostor = other.issue(pki.server.identity, now=time.time())
    impostor = WorkloadCert.from_pem(impostor.cert_pem, impostor.key_pem, pki.ca.roots_pem)

    async def body() -> None:
        server = HboneServer(server_context(impostor), peer_check=client_peer_check(TD))
        addr = await server.start(LOOPBACK)
        try:
            with pytest.raises(PeerCertificateUntrusted):
                await zt_dial(pki, addr)
        finally:
            await server.shutdown(0.5)

    run(body())


def test_zt_client_refuses_unexpected_server_identity(pki: Pki) -> None:
    async def body() -> None:
        async with zt_server(pki) as (_, addr):
            with pytest.raises(PeerIdentityMismatch):
                await dial(
                    addr,
                    client_context(pki.client),
                    peer_check=server_peer_check([SpiffeId(TD, "default", "someone-else")]),
                )

    run(body())


def test_shutdown_drains_with_goaway_and_lets_live_streams_finish(pki: Pki) -> None:
    async def body() -> None:
        async with tcp_server(echo_handler) as echo, zt_server(pki) as (server, addr):
            driver = await zt_dial(pki, addr)
            stream = await open_tunnel(driver, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            shutdown = asyncio.ensure_future(server.shutdown(5.0))
            for _ in range(100):  # bounded wait for the GOAWAY
                if driver.goaway:
                    break
                await asyncio.sleep(0.01)
            assert driver.goaway and not driver.usable
            await stream.write(b"still flowing after GOAWAY")
            stream.write_eof()
            got = b""
            while chunk := await stream.read():
                got += chunk
                stream.acknowledge()
            assert got == b"still flowing after GOAWAY"
            started = time.monotonic()
            await asyncio.wait_for(shutdown, 5)
            assert time.monotonic() - started < 2, "drain waited for the deadline, not the streams"
            await asyncio.wait_for(driver.closed, 2)

    run(body())


def test_drain_deadline_cuts_streams_that_do_not_finish(pki: Pki) -> None:
    async def body() -> None:
        async with tcp_server(echo_handler) as echo, zt_server(pki) as (server, addr):
            driver = await zt_dial(pki, addr)
            stream = await open_tunnel(driver, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            started = time.monotonic()
            await server.shutdown(0.5)
            elapsed = time.monotonic() - started
            assert 0.4 <= elapsed < 3
            await asyncio.wait_for(driver.closed, 2)
            with pytest.raises(StreamResetError):  # RST_STREAM or the connection's end
                await read_all_stream(stream)

    run(body())


async def read_all_stream(stream: HboneStream) -> bytes:
    out = b""
    while chunk := await stream.read():
        out += chunk
    return out


def test_ipv6_authority_round_trip(pki: Pki) -> None:
    async def body() -> None:
        server = await asyncio.start_server(echo_handler, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with zt_server(pki) as (_, addr):
                driver = await zt_dial(pki, addr)
                request = ConnectRequest(SocketAddr(SocketAddr.parse(f"[::1]:{port}").ip, port))
                stream = await open_tunnel(driver, request)
                await stream.write(b"v6")
                stream.write_eof()
                assert await read_all_stream(stream) == b"v6"
                driver.close()
        finally:
            server.close()

    run(body())


def test_settings_smaller_windows_still_carry_bulk(pki: Pki) -> None:
    """With minimal windows (64 KiB), 4 MiB still flow: window updates follow acknowledgements."""
    small = HboneSettings(stream_window=65_535, connection_window=65_535)

    async def body() -> None:
        async with tcp_server() as echo, zt_server(pki, settings=small) as (_, addr):
            driver = await zt_dial(pki, addr, settings=small)
            stream = await open_tunnel(driver, ConnectRequest(SocketAddr(echo.ip, echo.port)))
            payload = bytes(range(256)) * (4 << 12)

            async def send() -> None:
                await stream.write(payload)
                stream.write_eof()

            sender = asyncio.ensure_future(send())
            got = bytearray()
            while chunk := await stream.read():
                got += chunk
                stream.acknowledge()
            await sender
            assert bytes(got) == payload
            driver.close()

    run(body())


def test_client_giving_up_during_the_dial_leaves_the_server_healthy(pki: Pki) -> None:
    release = asyncio.Event()
    upstreams: list[socket.socket] = []

    async def slow_dialer(target: SocketAddr, timeout: float) -> socket.socket:
        await release.wait()
        sock = await connect_direct(target, timeout)
        upstreams.append(sock)
        return sock

    async def body() -> None:
        async with tcp_server() as echo:
            server = HboneServer(
                server_context(pki.server),
                peer_check=client_peer_check(TD),
                flow=InboundFlow(connect=slow_dialer),
            )
            addr = await server.start(LOOPBACK)
            try:
                driver = await zt_dial(pki, addr)
                request = ConnectRequest(SocketAddr(echo.ip, echo.port))
                abandoned = driver.open_stream(request)
                await asyncio.sleep(0.1)
                abandoned.reset(0x8)  # CANCEL while the server is still dialing
                await asyncio.sleep(0.1)
                release.set()
                stream = await open_tunnel(driver, request)  # the connection still works
                await stream.write(b"after")
                stream.write_eof()
                assert await read_all_stream(stream) == b"after"
                assert server.statuses == {200: 1}
                await asyncio.sleep(0.05)
                assert upstreams[0].fileno() == -1  # the abandoned upstream was closed
                driver.close()
            finally:
                await server.shutdown(0.5)

    run(body())


def test_broken_admission_hook_answers_503_instead_of_hanging(pki: Pki) -> None:
    def broken(arrival: Arrival) -> Admission:
        raise RuntimeError("policy engine bug")

    async def body() -> None:
        async with zt_server(pki, admission=broken) as (_, addr):
            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, _request(80))
            assert (info.value.status, info.value.detail) == (503, "internal_error")
            assert driver.usable
            driver.close()

    run(body())


def test_dialer_zt_error_is_answered_with_its_status(pki: Pki) -> None:
    """The inbound room's dialer refuses an authority that is not the pod: 400."""

    async def picky(target: SocketAddr, timeout: float) -> socket.socket:
        raise AuthorityMismatch(f"{target} is not this pod")

    async def body() -> None:
        server = HboneServer(
            server_context(pki.server),
            peer_check=client_peer_check(TD),
            flow=InboundFlow(connect=picky),
        )
        addr = await server.start(LOOPBACK)
        try:
            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, _request(80))
            assert (info.value.status, info.value.detail) == (400, "authority_mismatch")
            driver.close()
        finally:
            await server.shutdown(0.5)

    run(body())


def test_broken_peer_check_refuses_the_connection(pki: Pki) -> None:
    def broken(obj: ssl.SSLObject | ssl.SSLSocket | None) -> SpiffeId:
        raise RuntimeError("identity bug")

    async def body() -> None:
        server = HboneServer(server_context(pki.server), peer_check=broken)
        addr = await server.start(LOOPBACK)
        try:
            with pytest.raises((TlsError, ConnectionLost)):
                await zt_dial(pki, addr)
            assert server.connections_accepted == 0
            assert len(server.peer_refusals) == 1
        finally:
            await server.shutdown(0.5)

    run(body())


def test_hbone_over_ipv6_loopback(pki: Pki) -> None:
    async def body() -> None:
        v6 = SocketAddr.parse("[::1]:1")
        server = HboneServer(server_context(pki.server), peer_check=client_peer_check(TD))
        addr = await server.start(SocketAddr(v6.ip, 0))
        try:
            assert str(addr).startswith("[::1]:")
            async with tcp_server() as echo:
                driver = await zt_dial(pki, addr)
                stream = await open_tunnel(driver, ConnectRequest(SocketAddr(echo.ip, echo.port)))
                await stream.write(b"over v6")
                stream.write_eof()
                assert await read_all_stream(stream) == b"over v6"
                driver.close()
        finally:
            await server.shutdown(0.5)

    run(body())
