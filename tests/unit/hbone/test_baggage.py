"""`baggage` and `forwarded` on HBONE CONNECTs and 200s, as ztunnel writes and reads them
(zt/hbone/baggage.py; its src/baggage.rs and outbound.rs `build_forwarded`)."""

from __future__ import annotations

import ipaddress

import pytest

from zt.addr import HostPort, SocketAddr
from zt.hbone.baggage import Baggage
from zt.hbone.errors import BadConnectRequest
from zt.hbone.events import ConnectRequested, ConnectResponded
from zt.hbone.request import ConnectRequest, response_headers

from .pair import Pair

V4 = ipaddress.IPv4Address("10.0.0.7")
FULL = Baggage("K1", "NS1", "N1", "N2", "V1", "r1", "z1")
# ztunnel's baggage_header_val of the same names, in its order
FULL_TEXT = (
    "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,"
    "service.version=V1,cloud.region=r1,cloud.availability_zone=z1"
)


def test_header_is_ztunnel_order_and_keys() -> None:
    assert FULL.header() == FULL_TEXT
    assert FULL.header("job") == FULL_TEXT.replace("deployment", "job")
    assert Baggage(namespace="ns").header() == "k8s.namespace.name=ns"
    assert Baggage().header() is None  # no empty header


def test_parse_inverts_header_and_reads_every_workload_type() -> None:
    assert Baggage.parse(FULL_TEXT) == FULL
    for kind in ("cronjob", "pod", "job"):
        assert Baggage.parse(f"k8s.{kind}.name=w").workload_name == "w"


def test_parse_is_lenient_like_ztunnel() -> None:
    # empty values are unset, unknown keys and members without "=" ignored, lines joined
    assert Baggage.parse("k8s.cluster.name=,service.name=") == Baggage()
    assert Baggage.parse(["k8s.cluster.name=K1", "junk,x=y", "k8s.namespace.name=NS1"]) == (
        Baggage(cluster_id="K1", namespace="NS1")
    )
    # W3C properties and whitespace around members are dropped; a value a label could not hold
    # (here a space or a quote) is ignored rather than trusted
    assert Baggage.parse(' service.name = a ;prop=1 , service.version="x"') == Baggage(
        service_name="a"
    )
    assert not Baggage.parse(None)


def test_forwarded_host_is_sent_as_ztunnel_builds_it_and_parsed_back() -> None:
    request = ConnectRequest(
        SocketAddr(V4, 8080), forwarded_for="10.0.0.1:4000", forwarded_host="echo.ns.svc"
    )
    assert (b"forwarded", b'for="10.0.0.1:4000";host=echo.ns.svc') in request.headers()
    assert ConnectRequest.parse(request.headers()) == request


@pytest.mark.parametrize(
    ("value", "host"),
    [
        (b'for="10.0.0.1:4000";host=echo.ns.svc.cluster.local', "echo.ns.svc.cluster.local"),
        (b'host="echo.ns"', "echo.ns"),  # quoted, as ztunnel's parse_forwarded_host accepts
        (b'for="1.2.3.4:5"', None),
        (b'host="a b"', None),  # not a hostname: ignored, never a 400
    ],
)
def test_forwarded_host_parsing(value: bytes, host: str | None) -> None:
    headers = [(b":method", b"CONNECT"), (b":authority", b"10.0.0.7:80"), (b"forwarded", value)]
    assert ConnectRequest.parse(headers).forwarded_host == host


def test_forwarded_host_must_be_a_token() -> None:
    with pytest.raises(BadConnectRequest, match="forwarded_host"):
        ConnectRequest(HostPort("echo.ns", 80), forwarded_host="a;b")


def test_a_200_carries_baggage_and_the_client_event_holds_it() -> None:
    assert response_headers(200, baggage="service.name=a")[-1] == (b"baggage", b"service.name=a")
    assert response_headers(503, "x", baggage="service.name=a")[-1][0] != b"baggage"
    pair = Pair()
    sid = pair.client.open_stream(ConnectRequest(SocketAddr(V4, 80)))
    pair.pump()
    assert any(isinstance(e, ConnectRequested) for e in pair.take_server())
    pair.server.respond(sid, 200, baggage=FULL_TEXT)
    pair.pump()
    assert pair.take_client() == [ConnectResponded(sid, 200, "", FULL_TEXT)]
