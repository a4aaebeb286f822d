"""zt's inbound delivers a tunnel to a waypoint through its application tunnel (PROXY v2, as
ztunnel: zt/proxy/proxyv2.py), and a real Envoy reads the header.

The waypoint pod is 127.0.0.1 with `applicationTunnel: {protocol: PROXY, port: <Envoy>}`; the
server pod 10.0.0.2 names it as its waypoint. A zt HBONE client CONNECTs to `10.0.0.2:8080`
through zt's inbound (the node's own `PodFlows.admit`); zt delivers to Envoy's listener, whose
`proxy_protocol` listener filter takes the addresses and TLV 0xD0 (into dynamic metadata, as
Istio's waypoint does) and whose access log shows what zt sent: the source is the HBONE client's
address, the local address the tunnel's target, the peer principal the client's SPIFFE id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.interop import targets
from tests.interop.conftest import CLIENT_ID, SERVER_ID, TD, InteropPki
from tests.interop.envoy import run_envoy
from zt.addr import SocketAddr, from_sockaddr
from zt.config import load_document
from zt.config.watcher import SnapshotStore
from zt.hbone.request import ConnectRequest
from zt.identity.tls import client_context, server_context
from zt.node.flows import PodFlows
from zt.node.podnet import PodNet
from zt.node.services import NodeServices
from zt.proxy.client import dial, open_tunnel
from zt.proxy.inbound import InboundFlow
from zt.proxy.pool import HbonePool
from zt.proxy.server import HboneServer
from zt.proxy.tls import client_peer_check, server_peer_check
from zt.state.loopguard import DEFAULT_ILLEGAL_PORTS

pytestmark = pytest.mark.envoy

ACCESS_FORMAT = "remote=%DOWNSTREAM_REMOTE_ADDRESS% local=%DOWNSTREAM_LOCAL_ADDRESS%"
ACCESS_FORMAT += " peer=%DYNAMIC_METADATA(istio.peer_principal:peer_principal)%\n"


def _waypoint_listener(port: int, echo: int, access_log: Path) -> dict[str, Any]:
    """A waypoint's PROXY entry, the way Istio configures it: proxy_protocol listener filter,
    TLV 0xD0 into metadata; then plain TCP to an echo target, with an access log."""
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "waypoint",
        "cluster": "echo",
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3"
                    ".FileAccessLog",
                    "path": str(access_log),
                    "log_format": {"text_format_source": {"inline_string": ACCESS_FORMAT}},
                },
            }
        ],
    }
    proxy_protocol = {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3"
        ".ProxyProtocol",
        "rules": [
            {
                "tlv_type": 0xD0,
                "on_tlv_present": {
                    "metadata_namespace": "istio.peer_principal",
                    "key": "peer_principal",
                },
            }
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "waypoint",
                    "address": address,
                    "listener_filters": [
                        {"name": "envoy.filters.listener.proxy_protocol", "typed_config": proxy_protocol}
                    ],
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}]}
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "echo",
                    "connect_timeout": "2s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo}}}}]}
                        ],
                    },
                }
            ],
        }
    }  # fmt: skip


class _NodeServices:
    """The part of a node's services `PodFlows.admit` reads: the snapshot store and the loop
    guard (the real NodeServices also holds BPF capture, certificates and metrics)."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.illegal_ports = DEFAULT_ILLEGAL_PORTS
        self.node = "node-a"

    def count_loop_guard(self, uid: str, path: str, reason: str) -> None:
        raise AssertionError(f"loop guard: {uid} {path} {reason}")


def _waypoint_flows(envoy_port: int) -> PodFlows:
    gateway = {"destination": {"address": "127.0.0.1"}}
    tunnel = {"protocol": "PROXY", "port": envoy_port}
    pod = {"protocol": "HBONE", "node": "node-a"}
    doc = {
        "workloads": [
            {**pod, "uid": "waypoint", "name": "waypoint", "serviceAccount": "server",
             "workloadIps": ["127.0.0.1"], "applicationTunnel": tunnel},
            {**pod, "uid": "server", "name": "server", "workloadIps": ["10.0.0.2"],
             "waypoint": gateway},
        ]
    }  # fmt: skip
    snapshot = load_document(doc, "test")
    services = cast(NodeServices, _NodeServices(SnapshotStore(snapshot)))
    # admit needs neither the pod's netns nor its pool: the test's InboundFlow dials from here
    return PodFlows(
        services, snapshot.by_uid["waypoint"], cast(PodNet, None), cast(HbonePool, None)
    )


@pytest.fixture(scope="module")
def waypoint(interop_pki: InteropPki) -> Iterator[tuple[int, Path]]:
    port = targets.free_port()
    access_log = interop_pki.directory / "waypoint-access.log"
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(targets.serve(targets.echo))
        config = _waypoint_listener(port, echo, access_log)
        stack.enter_context(run_envoy(config, interop_pki.directory / "envoy-waypoint"))
        yield port, access_log


def _read_line(path: Path, timeout: float = 10.0) -> str:
    """Envoy writes the line when the connection ends and flushes its file within a second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()).endswith("\n"):
            return text
        time.sleep(0.05)
    raise AssertionError(f"no access log line in {path} within {timeout} s")


def test_envoy_reads_the_proxy_header_zt_sends(
    waypoint: tuple[int, Path], interop_pki: InteropPki
) -> None:
    envoy_port, access_log = waypoint
    flows = _waypoint_flows(envoy_port)

    async def body() -> SocketAddr:
        server = HboneServer(
            server_context(interop_pki.server),
            peer_check=client_peer_check(TD),
            flow=InboundFlow(flows.admit),
        )
        zt_port = targets.free_port()
        await server.start(SocketAddr.parse(f"127.0.0.1:{zt_port}"))
        try:
            driver = await dial(
                SocketAddr.parse(f"127.0.0.1:{zt_port}"),
                client_context(interop_pki.client),
                peer_check=server_peer_check([SERVER_ID]),
            )
            try:
                assert driver.transport is not None
                client = from_sockaddr(driver.transport.get_extra_info("sockname"))
                request = ConnectRequest(SocketAddr.parse("10.0.0.2:8080"))
                stream = await open_tunnel(driver, request)
                await stream.write(b"through the waypoint")
                stream.write_eof()
                got = bytearray()
                while chunk := await stream.read():
                    got += chunk
                    stream.acknowledge()
                assert bytes(got) == b"through the waypoint"  # the header was not echoed
            finally:
                driver.close()
        finally:
            await server.shutdown(0.5)
        return client

    client = asyncio.run(asyncio.wait_for(body(), 30))
    line = _read_line(access_log)
    assert line == f"remote={client} local=10.0.0.2:8080 peer={CLIENT_ID}\n", line
