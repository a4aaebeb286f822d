"""The mesh every DNS test asks about, and helpers to ask.

Client pod: default/client (namespace `default`, network "").
"""

from __future__ import annotations

from typing import Any

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from zt.config.convert import snapshot as to_snapshot
from zt.config.schema import MeshFile
from zt.state.snapshot import Snapshot

CLIENT = "default/client"
MESH: dict[str, Any] = {
    "workloads": [
        {"uid": CLIENT, "name": "client", "workloadIps": ["10.1.0.5"], "protocol": "HBONE"},
        {
            "uid": "default/db-0",
            "name": "db-0",
            "workloadIps": ["10.1.0.7", "fd00:1::7", "10.1.1.7"],
            "services": {"default/db.default.svc.cluster.local": {}},
        },
        {
            "uid": "default/db-1",
            "name": "db-1",
            "workloadIps": ["10.1.0.8"],
            "status": "Unhealthy",
            "services": {"default/db.default.svc.cluster.local": {}},
        },
        {
            "uid": "default/web-0",
            "name": "web-0",
            "workloadIps": ["10.1.0.9", "fd00:1::9"],
            "hostname": "web-0.web.default.svc.cluster.local",
        },
    ],
    "services": [
        {
            "name": "reviews",
            "hostname": "reviews.default.svc.cluster.local",
            "vips": ["10.96.0.20", "fd00:96::20", "other/10.200.0.20"],
            "ports": {9080: 9080},
        },
        {
            "name": "echo",
            "namespace": "shop",
            "hostname": "echo.shop.svc.cluster.local",
            "vips": ["10.96.0.30"],
        },
        {
            "name": "echo",
            "namespace": "default",
            "hostname": "echo.default.svc.cluster.local",
            "vips": ["10.96.0.31"],
        },
        {"name": "db", "hostname": "db.default.svc.cluster.local"},
        {"name": "api", "hostname": "api.example.com", "vips": ["240.240.0.1"]},
        {"name": "wild", "hostname": "*.wild.example", "vips": ["240.240.0.2"]},
        {"name": "novip", "hostname": "novip.example.net"},
    ],
}


def mesh_snapshot(doc: dict[str, Any] | None = None) -> Snapshot:
    return to_snapshot(MeshFile.model_validate(doc or MESH))


@pytest.fixture(scope="session")
def snapshot() -> Snapshot:
    return mesh_snapshot()


def addresses(message: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in message.answer for rd in rrset if rrset.rdtype in (1, 28)}


def rrsets(message: dns.message.Message) -> list[tuple[str, str, int, list[str]]]:
    """(owner, type, ttl, sorted rdata) per answer RRset."""
    return [_row(r) for r in message.answer]


def _row(r: dns.rrset.RRset) -> tuple[str, str, int, list[str]]:
    return (
        r.name.to_text(),
        dns.rdatatype.to_text(r.rdtype),
        r.ttl,
        sorted(x.to_text() for x in r),
    )
