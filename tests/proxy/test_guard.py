"""The standalone server's admission (zt/proxy/guard.py) on a real HboneServer over loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import os

import pytest

from tests.proxy.helpers import Pki, run, tcp_server, zt_dial, zt_server
from zt.addr import HostPort, SocketAddr
from zt.hbone.request import ConnectRequest
from zt.proxy.client import open_tunnel
from zt.proxy.errors import TunnelRefused
from zt.proxy.guard import StandaloneAdmission, is_local_address
from zt.state import AllowList


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _status(pki: Pki, via: SocketAddr, authority: SocketAddr) -> int:
    driver = await zt_dial(pki, via)
    try:
        await open_tunnel(
            driver, ConnectRequest(SocketAddr(authority.ip, authority.port)), timeout=10
        )
        return 200
    except TunnelRefused as exc:
        return exc.status
    finally:
        driver.close()


def test_connects_to_itself_are_400_and_cost_no_fds(pki: Pki) -> None:
    """200 CONNECTs aimed at the server's own address, on one connection: every one is 400,
    nothing is dialed, and the process's fds do not grow (before the guard each nested)."""

    async def body() -> None:
        admission = StandaloneAdmission(AllowList.parse(["127.0.0.0/8"]))
        async with zt_server(pki, admission=admission) as (server, addr):
            admission.bind(addr)
            driver = await zt_dial(pki, addr)
            before = _fds()
            request = ConnectRequest(SocketAddr(addr.ip, addr.port))
            statuses = []
            for _ in range(200):
                try:
                    await open_tunnel(driver, request, timeout=10)
                    statuses.append(200)
                except TunnelRefused as exc:
                    statuses.append(exc.status)
            after = _fds()
            driver.close()
            assert statuses == [400] * 200
            assert server.statuses == {400: 200} and server.tunnels == 0
            assert admission.refused == {"loop_guard": 200}
            assert after - before <= 2, (before, after)

    run(body(), timeout=60)


def test_loopback_needs_an_explicit_allow(pki: Pki) -> None:
    async def body() -> None:
        accepted: list[int] = []

        async def count(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(1)
            w.close()

        async with tcp_server(count) as target:
            for allow, want in (
                ([], 401),
                (["0.0.0.0/0"], 401),
                ([f"127.0.0.1:{target.port}"], 200),
            ):
                admission = StandaloneAdmission(AllowList.parse(allow))
                async with zt_server(pki, admission=admission) as (_, addr):
                    admission.bind(addr)
                    assert await _status(pki, addr, target) == want, allow
        assert len(accepted) == 1  # only the allowed CONNECT dialed

    run(body(), timeout=60)


def test_zt_ports_on_loopback_are_400_even_when_allowed(pki: Pki) -> None:
    async def body() -> None:
        admission = StandaloneAdmission(AllowList.parse(["127.0.0.0/8"]))
        async with zt_server(pki, admission=admission) as (_, addr):
            admission.bind(addr)
            for port in (15000, 15001, 15006, 15008, 15020, 15021, 15053, 15080):
                dst = SocketAddr(ipaddress.ip_address("127.0.0.1"), port)
                assert await _status(pki, addr, dst) == 400, port

    run(body(), timeout=60)


def test_before_bind_everything_is_refused(pki: Pki) -> None:
    async def body() -> None:
        admission = StandaloneAdmission(AllowList.parse(["127.0.0.0/8"]))
        async with tcp_server() as target, zt_server(pki, admission=admission) as (_, addr):
            assert await _status(pki, addr, target) == 503

    run(body(), timeout=60)


@pytest.mark.parametrize(
    ("ip", "local"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("0.0.0.0", True),
     ("192.0.2.1", False), ("2001:db8::1", False)],
)  # fmt: skip
def test_is_local_address(ip: str, local: bool) -> None:
    assert is_local_address(ipaddress.ip_address(ip)) is local


def test_a_hostname_authority_is_503_the_standalone_server_resolves_no_names(pki: Pki) -> None:
    """`zt hbone serve` has no mesh: a CONNECT to `name:port` is refused (503 unknown_hostname),
    never looked up or dialed."""

    async def body() -> None:
        admission = StandaloneAdmission(AllowList.parse([]))
        async with zt_server(pki, admission=admission) as (server, addr):
            admission.bind(addr)
            driver = await zt_dial(pki, addr)
            with pytest.raises(TunnelRefused) as info:
                await open_tunnel(driver, ConnectRequest(HostPort("localhost", 22)), timeout=10)
            driver.close()
            assert (info.value.status, info.value.detail) == (503, "unknown_hostname")
            assert admission.refused == {"unknown_hostname": 1} and server.tunnels == 0

    run(body())
