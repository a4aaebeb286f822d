"""Endpoint picking by health and locality (zt/state/endpoints.py: ztunnel's load_balance), and
route()'s and resolve()'s use of it through the mesh file's `loadBalancer`."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from zt.addr import HostPort, SocketAddr
from zt.config import load_document
from zt.config.dump import service as dump_service
from zt.errors import ConfigError
from zt.state import RouteKind, Snapshot, resolve, route
from zt.state.endpoints import nearest, pick, rank
from zt.state.model import (
    Health,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Locality,
    Protocol,
    Service,
    Workload,
)

NETWORK, REGION, ZONE = LoadBalancerScope.NETWORK, LoadBalancerScope.REGION, LoadBalancerScope.ZONE
FAILOVER, STRICT = LoadBalancerMode.FAILOVER, LoadBalancerMode.STRICT


def _wl(uid: str, region: str, zone: str, *, network: str = "", healthy: bool = True) -> Workload:
    return Workload(
        uid, uid, "ns", "sa", "cluster.local", (), network, Protocol.HBONE, "node-1", None,
        Health.HEALTHY if healthy else Health.UNHEALTHY, locality=Locality(region, zone),
    )  # fmt: skip


SRC = _wl("src", "eu", "eu-1")
SAME_ZONE = _wl("same-zone", "eu", "eu-1")
SAME_REGION = _wl("same-region", "eu", "eu-2")
FAR = _wl("far", "us", "us-1")
FAR_SAME_ZONE_NAME = _wl("far-zone-name", "us", "eu-1")  # zone matches, region does not
OTHER_NET = _wl("other-net", "eu", "eu-1", network="net-2")


def _svc(*prefs: LoadBalancerScope, mode: LoadBalancerMode = FAILOVER) -> Service:
    return Service("s", "ns", "s.ns.svc", (), {}, load_balancer=LoadBalancer(prefs, mode))


def test_failover_ranks_by_leading_scopes_matched() -> None:
    lb = LoadBalancer((REGION, ZONE), FAILOVER)
    assert [rank(lb, SRC, w) for w in (SAME_ZONE, SAME_REGION, FAR, FAR_SAME_ZONE_NAME)] == [
        2, 1, 0, 0,  # ranks stop at the first scope not shared: a zone name alone counts nothing
    ]  # fmt: skip


def test_failover_picks_the_nearest_tier_and_fails_over_when_it_is_gone() -> None:
    svc = _svc(REGION, ZONE)
    everyone = [FAR, SAME_REGION, SAME_ZONE]
    assert nearest(svc, everyone, SRC) == [SAME_ZONE]
    assert nearest(svc, [FAR, SAME_REGION], SRC) == [SAME_REGION]
    assert nearest(svc, [FAR], SRC) == [FAR]
    # an unhealthy endpoint is no tier: the next one takes over
    assert nearest(svc, [FAR, _wl("down", "eu", "eu-1", healthy=False)], SRC) == [FAR]


def test_strict_takes_only_endpoints_sharing_every_scope() -> None:
    svc = _svc(REGION, ZONE, mode=STRICT)
    assert nearest(svc, [FAR, SAME_REGION, SAME_ZONE], SRC) == [SAME_ZONE]
    assert nearest(svc, [FAR, SAME_REGION], SRC) == []


def test_network_first_outranks_every_other_network_endpoint() -> None:
    lb = LoadBalancer((NETWORK, REGION, ZONE), FAILOVER)
    # same network but far (1 + bonus 2) beats another network in the same zone (0 + 2)
    assert rank(lb, SRC, FAR) == 3
    assert rank(lb, SRC, OTHER_NET) == 2
    assert rank(lb, SRC, SAME_ZONE) == 5
    assert nearest(_svc(NETWORK, REGION, ZONE), [OTHER_NET, FAR], SRC) == [FAR]
    assert rank(LoadBalancer((NETWORK, REGION), STRICT), SRC, OTHER_NET) is None


def test_without_load_balancer_or_unspecified_mode_every_healthy_endpoint_qualifies() -> None:
    plain = Service("s", "ns", "s.ns.svc", (), {})
    down = _wl("down", "eu", "eu-1", healthy=False)
    assert nearest(plain, [FAR, SAME_ZONE, down], SRC) == [FAR, SAME_ZONE]
    unspecified = _svc(REGION, mode=LoadBalancerMode.UNSPECIFIED_MODE)
    assert nearest(unspecified, [FAR, SAME_ZONE], SRC) == [FAR, SAME_ZONE]


# -- through the mesh file: route() and resolve() ------------------------------------------------

KEY = "default/echo.default.svc.cluster.local"


def _mesh(lb: dict[str, Any] | None, *, vips: bool = True) -> Snapshot:
    def w(uid: str, ip: str, zone: str, **extra: Any) -> dict[str, Any]:
        return {
            "uid": uid, "name": uid, "protocol": "HBONE", "workloadIps": [ip],
            "locality": {"region": "eu", "zone": zone}, "services": {KEY: {80: 8080}}, **extra,
        }  # fmt: skip

    service: dict[str, Any] = {
        "name": "echo", "hostname": "echo.default.svc.cluster.local", "ports": {80: 8080},
        "vips": ["/10.96.0.10"] if vips else [],
    }  # fmt: skip
    if lb is not None:
        service["loadBalancer"] = lb
    src = {"uid": "src", "name": "src", "workloadIps": ["10.1.0.2"],
           "locality": {"region": "eu", "zone": "eu-1"}}  # fmt: skip
    workloads = [
        src,
        w("near", "10.2.0.2", "eu-1"),
        w("near-down", "10.2.0.4", "eu-1", status="Unhealthy"),
        w("other", "10.2.0.3", "eu-2"),
    ]
    return load_document({"workloads": workloads, "services": [service]}, "test")


def _picks(snapshot: Snapshot) -> set[str | None]:
    src = snapshot.by_uid["src"]
    dst = SocketAddr.parse("10.96.0.10:80")
    return {route(dst, src, snapshot, seed=s).destination_workload for s in range(30)}


def test_route_honours_the_service_load_balancer() -> None:
    assert _picks(_mesh(None)) == {"near", "other"}
    failover = {"routingPreferences": ["REGION", "ZONE"], "mode": "FAILOVER"}
    assert _picks(_mesh(failover)) == {"near"}
    allow_all = {**failover, "healthPolicy": "ALLOW_ALL"}
    assert _picks(_mesh(allow_all)) == {"near", "near-down"}
    assert _picks(_mesh({**failover, "mode": "STRICT"})) == {"near"}


def test_strict_with_no_endpoint_sharing_every_scope_is_refused() -> None:
    strict = {"routingPreferences": ["ZONE"], "mode": "STRICT", "healthPolicy": "ONLY_HEALTHY"}
    snapshot = _mesh(strict)
    far_source = dataclasses.replace(snapshot.by_uid["src"], locality=Locality("eu", "eu-9"))
    decided = route(SocketAddr.parse("10.96.0.10:80"), far_source, snapshot)
    assert decided.kind is RouteKind.REFUSED
    assert "load balancer" in decided.reason


def test_headless_resolve_honours_the_load_balancer() -> None:
    snapshot = _mesh({"routingPreferences": ["ZONE"], "mode": "FAILOVER"}, vips=False)
    src = snapshot.by_uid["src"]
    name = HostPort("echo.default.svc.cluster.local", 80)
    picked = {resolve(snapshot, name, src, seed=s).destination for s in range(20)}
    assert picked == {SocketAddr.parse("10.2.0.2:80")}


@pytest.mark.parametrize(
    ("lb", "field"),
    [
        ({"mode": "ROUND_ROBIN"}, "mode"),
        ({"routingPreferences": ["REGION", "REGION"]}, "routingPreferences"),
        ({"routingPreferences": ["PLANET"]}, "routingPreferences"),
        ({"healthPolicy": "SOMETIMES"}, "healthPolicy"),
        ({"weights": 1}, "weights"),
    ],
)
def test_bad_load_balancer_names_the_field(lb: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _mesh(lb)


def test_deterministic_for_a_seed() -> None:
    svc = _svc(REGION)
    options = [SAME_ZONE, SAME_REGION]
    a = [pick(svc, options, SRC, random.Random(s)) for s in range(10)]
    assert a == [pick(svc, options, SRC, random.Random(s)) for s in range(10)]


def test_config_dump_writes_the_load_balancer_back_as_the_file_said_it() -> None:
    lb = {"routingPreferences": ["NETWORK", "ZONE"], "mode": "STRICT", "healthPolicy": "ALLOW_ALL"}
    [service] = _mesh(lb).services
    assert dump_service(service)["loadBalancer"] == lb
    [plain] = _mesh(None).services
    assert "loadBalancer" not in dump_service(plain)
