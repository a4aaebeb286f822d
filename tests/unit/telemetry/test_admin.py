"""The admin endpoint as ztunnel's: the index, `/logging` in ztunnel's syntax, and /config_dump's
top-level workloads, services, policies, certificates and version.

The handler is called in process (it is a plain Request -> Response function; the socket path is
covered by test_endpoints.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import zt
from zt.config import SnapshotStore, load_document
from zt.identity.ca import CertificateAuthority
from zt.identity.errors import CertificateUnavailable
from zt.identity.manager import CertificateManager
from zt.identity.sources import StaticCertificateSource
from zt.identity.spiffe import SpiffeId
from zt.node.daemon import NodeDaemon, NodeOptions
from zt.node.services import NodeServices
from zt.telemetry import logsetup
from zt.telemetry.endpoints import Admin, certificate_dump
from zt.telemetry.http import Request

T0 = 1_900_000_000.0
DAY = 86400.0


def call(
    admin: Admin, method: str, path: str, query: dict[str, str] | None = None
) -> tuple[int, str]:
    response = admin(Request(method, path, query or {}, {}))
    return response.status, response.body.decode()


@pytest.fixture
def admin() -> Iterator[Admin]:
    """An Admin with no node behind it; every scope's level is put back afterwards."""
    loggers = logging.root.manager.loggerDict
    before = {n: lg.level for n, lg in loggers.items() if isinstance(lg, logging.Logger)}
    try:
        yield Admin(dict, lambda: None)
    finally:
        for name, logger in list(loggers.items()):
            if isinstance(logger, logging.Logger):
                logger.setLevel(before.get(name, logging.NOTSET))


def test_index_lists_every_endpoint(admin: Admin) -> None:
    status, body = call(admin, "GET", "/")
    assert status == 200
    assert [line.split()[0] for line in body.splitlines()] == [
        "/config_dump",
        "/logging",
        "/quitquitquit",
    ]
    status, body = call(admin, "GET", "/nope")
    assert status == 404 and "/config_dump" in body and "'/nope'" in body


def test_logging_takes_ztunnels_comma_list(admin: Admin) -> None:
    query = {"reset": "", "level": "info,access=debug"}  # reset: whatever ran before
    status, body = call(admin, "POST", "/logging", query)
    assert status == 200
    assert logging.getLogger("zt").level == logging.INFO
    assert logging.getLogger("zt.access").level == logging.DEBUG
    assert body.startswith("current log level is info,zt.access=debug\n")
    assert "\nzt.access: debug\n" in body and "\nzt.node: info\n" in body
    # a ztunnel module path sets every zt scope doing that work
    assert call(admin, "POST", "/logging", {"level": "ztunnel::proxy=warn"})[0] == 200
    for scope in ("zt.proxy.inbound", "zt.proxy.outbound", "zt.proxy.server"):
        assert logging.getLogger(scope).level == logging.WARNING
    # zt's own scope names work too; the listing names levels as ztunnel does
    assert call(admin, "POST", "/logging", {"level": "zt.config=trace,zt.node=off"})[0] == 200
    assert logging.getLogger("zt.config").level == logsetup.TRACE < logging.DEBUG
    assert logging.getLogger("zt.node").level == logsetup.OFF > logging.CRITICAL
    status, body = call(admin, "GET", "/logging")
    assert status == 200 and "\nzt.config: trace\n" in body and "\nzt.proxy.inbound: warn\n" in body
    assert "\nzt.node: off\n" in body


def test_logging_trace_and_off_filter_records(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logsetup.TRACE, logger="zt.config")
    call(admin, "POST", "/logging", {"level": "zt.config=trace"})
    logging.getLogger("zt.config").log(logsetup.TRACE, "fine detail")
    call(admin, "POST", "/logging", {"level": "zt.config=off"})
    logging.getLogger("zt.config").critical("silenced")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("TRACE", "fine detail")]


def test_logging_reset_restores_start_up_levels(admin: Admin) -> None:
    call(admin, "POST", "/logging", {"level": "debug,access=error,ztunnel::xds=trace"})
    status, body = call(admin, "POST", "/logging", {"reset": "", "level": "access=warn"})
    assert status == 200
    assert logging.getLogger("zt.config").level == logging.NOTSET
    assert logging.getLogger("zt.access").level == logging.WARNING
    assert "zt.config=" not in body.splitlines()[0]
    # POST without a query lists, as ztunnel's does
    assert call(admin, "POST", "/logging")[1].startswith("current log level is ")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"level": "loud"}, "level: got 'loud' in 'loud', expected one of trace, debug, info, "
         "warn, error, critical, off"),
        ({"level": "info,access=warning"}, "level: got 'warning' in 'access=warning', expected"),
        ({"level": "foo.bar=debug"}, "scope: got 'foo.bar', expected one of access, ztunnel, "),
        ({"level": "zt.nope=debug"}, "scope: got 'zt.nope'"),
        ({"level": "access"}, "level: got 'access' in 'access'"),
        ({"zt.access": "debug"}, "query: got 'zt.access', expected level or reset"),
    ],
)  # fmt: skip
def test_logging_refuses_unknown_names_and_changes_nothing(
    admin: Admin, query: dict[str, str], expected: str
) -> None:
    names = set(logging.root.manager.loggerDict)
    levels = logsetup.current_levels()
    status, body = call(admin, "POST", "/logging", {"level": "debug", **query})
    assert status == 400 and body.startswith(expected), body
    assert "levels: trace, debug, info, warn, error, critical, off" in body  # the help follows
    assert set(logging.root.manager.loggerDict) == names  # no logger named by a request
    assert logsetup.current_levels() == levels  # all or nothing: `debug` was not applied


def test_logging_changes_only_by_post_and_not_from_browsers(admin: Admin) -> None:
    levels = logsetup.current_levels()
    assert call(admin, "GET", "/logging", {"level": "debug"})[0] == 405
    response = admin(Request("POST", "/logging", {"level": "trace"}, {"origin": "http://x"}))
    assert response.status == 403
    assert logsetup.current_levels() == levels


def test_every_ztunnel_target_maps_to_known_scopes() -> None:
    for target, scopes in logsetup.ZTUNNEL_SCOPES.items():
        assert scopes and set(scopes) <= set(logsetup.LOGGER_SCOPES), target


def _daemon(tmp_path: Path) -> tuple[NodeDaemon, CertificateManager]:
    ca = CertificateAuthority.init(tmp_path / "ca", now=T0 - DAY)
    manager = CertificateManager(ca, clock=lambda: T0)
    snapshot = load_document(
        {
            "workloads": [{"uid": "lab/a", "name": "a", "namespace": "lab", "node": "n1"}],
            "services": [{"name": "s", "namespace": "lab", "hostname": "s.lab"}],
            "policies": [{"name": "p", "namespace": "lab", "scope": "Global", "action": "Deny"}],
        },
        "t",
    )
    daemon = NodeDaemon(NodeOptions(config=Path("mesh.yaml"), node="n1"))
    capture = SimpleNamespace(status=lambda: SimpleNamespace(to_dict=lambda: {"mode": "connect"}))
    daemon.services = cast(
        NodeServices,
        SimpleNamespace(
            certs=manager,
            capture=capture,
            store=SnapshotStore(snapshot),
            dns=None,
            original_source=True,
        ),
    )
    return daemon, manager


def test_config_dump_has_ztunnels_keys_and_the_nodes_own(tmp_path: Path) -> None:
    daemon, manager = _daemon(tmp_path)
    identity = SpiffeId("cluster.local", "lab", "default")
    leaf = asyncio.run(manager.get(identity))
    assert daemon.services is not None
    store = daemon.services.store
    admin = Admin(lambda: daemon.config_dump(store), lambda: None)
    status, body = call(admin, "GET", "/config_dump")
    assert status == 200
    dump = json.loads(body)
    assert list(dump)[:5] == ["workloads", "services", "policies", "certificates", "version"]
    assert [w["uid"] for w in dump["workloads"]] == ["lab/a"]
    assert [s["hostname"] for s in dump["services"]] == ["s.lab"]
    assert [p["name"] for p in dump["policies"]] == ["p"]
    assert dump["version"]["version"] == zt.__version__
    assert dump["node"] == "n1" and dump["capture"] == {"mode": "connect"}
    assert dump["original_source"] is True  # delivery from the caller's IP
    assert dump["config"]["path"] == "mesh.yaml" and dump["config"]["generation"] == 1
    assert "workloads" not in dump["config"]  # said once, at the top
    [held] = dump["certificates"]
    assert (held["identity"], held["state"]) == (str(identity), "Available")
    [cert] = held["certChain"]
    parsed = x509.load_pem_x509_certificate(base64.b64decode(cert["pem"]))
    assert parsed.public_bytes(Encoding.PEM) == leaf.cert_pem
    assert cert["serialNumber"] == str(parsed.serial_number)
    start = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cert["validFrom"] == start
    assert cert["expirationTime"] == datetime.fromtimestamp(T0 + DAY, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    [root] = held["rootCerts"]
    root_cert = x509.load_pem_x509_certificate(base64.b64decode(root["pem"]))
    assert root_cert.subject == parsed.issuer


def test_certificate_states_follow_ztunnels(tmp_path: Path) -> None:
    """Initializing while the first issuance runs, Unavailable once it failed (a directory of
    pre-issued files that lacks the identity)."""
    (tmp_path / "certs").mkdir()
    manager = CertificateManager(StaticCertificateSource(tmp_path / "certs"), clock=lambda: T0)
    ident = SpiffeId("cluster.local", "lab", "missing")

    async def scenario() -> list[str]:
        task = asyncio.ensure_future(manager.get(ident))
        await asyncio.sleep(0)
        states = [state for _, state, _ in manager.held()]
        with pytest.raises(CertificateUnavailable):
            await task
        return states + [state for _, state, _ in manager.held()]

    assert asyncio.run(scenario()) == ["Initializing", "Unavailable: issuance failed, retrying"]
    assert certificate_dump(manager.held())[0]["certChain"] == []
