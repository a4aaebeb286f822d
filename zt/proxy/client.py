"""Client side: dial an HBONE server (TCP + TLS + peer identity check) and open tunnels on it."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from zt.addr import SocketAddr
from zt.hbone.request import ConnectRequest
from zt.hbone.settings import HboneSettings
from zt.identity.handshake import tls_error
from zt.proxy import tlssocket
from zt.proxy.driver import HboneDriver, PeerCheck
from zt.proxy.errors import DialFailed, TunnelRefused
from zt.proxy.flow import connect_direct
from zt.proxy.stream import HboneStream
from zt.sockopt import set_keepalive

DIAL_TIMEOUT = 10.0  # docs/design.md §2: upstream unreachable (10 s dial timeout)


async def dial(
    target: SocketAddr,
    context: ssl.SSLContext,
    *,
    peer_check: PeerCheck | None,
    settings: HboneSettings | None = None,
    timeout: float = DIAL_TIMEOUT,
    clock: Callable[[], float] | None = None,
    sock: socket.socket | None = None,
    tls_on_socket: bool | None = None,
) -> HboneDriver:
    """Open one HBONE connection; raises DialFailed or the peer check's typed error. With `sock`
    (already connected to `target`, e.g. made inside a pod's netns) only TLS runs on it.
    `tls_on_socket`: OpenSSL on the fd (zt/proxy/tlssocket.py) or asyncio's SSL protocol; None
    follows `tlssocket.used()` (on for kTLS)."""
    loop = asyncio.get_running_loop()

    def factory() -> HboneDriver:
        return HboneDriver("client", settings=settings, peer_check=peer_check, clock=clock)

    on_socket = tlssocket.used(tls_on_socket)
    try:
        async with asyncio.timeout(timeout):
            if on_socket:
                if sock is None:
                    sock = await connect_direct(target, timeout)  # with keepalive
                _, driver = await tlssocket.connect(context, sock, factory, server_side=False)
            # docs/design.md §2: no SNI is relied upon — server_hostname="" sends none.
            elif sock is not None:
                _, driver = await loop.create_connection(
                    factory, sock=sock, ssl=context, server_hostname=""
                )
            else:
                transport, driver = await loop.create_connection(
                    factory, str(target.ip), target.port, ssl=context, server_hostname=""
                )
                # A socket made for us (`sock`) has keepalive already (zt/capture/netns.py).
                raw = transport.get_extra_info("socket")
                if raw is not None:
                    set_keepalive(raw)
            await driver.ready
    except TimeoutError:
        raise DialFailed(str(target), f"no TLS connection within {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise tls_error(exc, peer=f"HBONE server {target}") from None
    except OSError as exc:
        raise DialFailed(str(target), exc.strerror or str(exc)) from None
    return driver


async def open_tunnel(
    driver: HboneDriver, request: ConnectRequest, *, timeout: float = DIAL_TIMEOUT
) -> HboneStream:
    """Send a CONNECT and wait for the answer; 200 returns the stream, else TunnelRefused."""
    stream = driver.open_stream(request)
    try:
        async with asyncio.timeout(timeout):
            status, reason = await stream.response
    except TimeoutError:
        stream.reset(0x8)  # CANCEL: we stopped waiting
        raise TunnelRefused(504, f"no response within {timeout:g} s") from None
    if status != 200:
        raise TunnelRefused(status, reason)
    return stream
