"""The operational endpoints over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from zt.telemetry.endpoints import Admin, Readiness, metrics_handler, readiness_handler
from zt.telemetry.http import BadHttpRequest, Handler, parse_head, serve
from zt.telemetry.metrics import Registry


async def _ask(handler: Handler, raw: bytes) -> tuple[int, bytes]:
    server = await serve("127.0.0.1", 0, handler)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def ask(handler: Handler, method: str, path: str) -> tuple[int, bytes]:
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    return asyncio.run(_ask(handler, raw))


def test_readiness_waits_for_every_condition() -> None:
    readiness = Readiness("config", "certificates", "capture")
    handler = readiness_handler(readiness)
    status, body = ask(handler, "GET", "/healthz/ready")
    assert (status, body) == (503, b"not ready: waiting for config, certificates, capture\n")
    for condition in ("config", "certificates"):
        readiness.set(condition)
    assert ask(handler, "GET", "/healthz/ready") == (503, b"not ready: waiting for capture\n")
    readiness.set("capture")
    assert ask(handler, "GET", "/healthz/ready") == (200, b"ready\n")
    with pytest.raises(KeyError):
        readiness.set("typo")


def test_metrics_endpoint() -> None:
    reg = Registry()
    reg.counter("zt_x_total", "x").inc(3)
    status, body = ask(metrics_handler(reg), "GET", "/metrics")
    assert status == 200 and b"\nzt_x_total 3.0\n" in body  # prometheus_client writes floats
    assert ask(metrics_handler(reg), "GET", "/")[0] == 404


def test_admin_config_dump_logging_and_quit() -> None:
    quits: list[int] = []
    admin = Admin(lambda: {"workloads": [{"uid": "a"}]}, lambda: quits.append(1))
    status, body = ask(admin, "GET", "/config_dump")
    assert status == 200 and json.loads(body) == {"workloads": [{"uid": "a"}]}
    assert ask(admin, "POST", "/logging?level=debug")[0] == 200
    assert logging.getLogger("zt").level == logging.DEBUG
    status, body = ask(admin, "POST", "/logging?level=zt.access=loud")
    assert status == 400 and body.startswith(b"level: got 'loud' in 'zt.access=loud'")
    assert ask(admin, "GET", "/quitquitquit")[0] == 405
    assert ask(admin, "HEAD", "/quitquitquit")[0] == 405
    assert quits == []
    assert ask(admin, "POST", "/quitquitquit") == (200, b"OK\n")
    assert quits == [1]
    logging.getLogger("zt").setLevel(logging.NOTSET)


def test_malformed_request_gets_400() -> None:
    status, body = asyncio.run(_ask(metrics_handler(Registry()), b"GARBAGE\r\n\r\n"))
    assert status == 400 and b"request line" in body


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/2",
        b"GET /\xff HTTP/1.1",
        b"GET / HTTP/1.1\r\nno-colon",
        b"GET / HTTP/1.1\r\nContent-Length: -1",
    ],
)
def test_parse_head_rejects(head: bytes) -> None:
    with pytest.raises(BadHttpRequest):
        parse_head(head)


def test_parse_head_query() -> None:
    request, length = parse_head(
        b"POST /logging?level=debug&zt.x=info HTTP/1.1\r\nContent-Length: 2"
    )
    assert request.query == {"level": "debug", "zt.x": "info"} and length == 2


def test_admin_changes_levels_only_by_post() -> None:
    admin = Admin(dict, lambda: None)
    zt = logging.getLogger("zt")
    before = zt.level
    try:
        status, body = ask(admin, "GET", "/logging?level=debug")
        assert status == 405 and b"POST /logging?level=<level>[,<scope>=<level>...]" in body
        assert zt.level == before
        status, body = ask(admin, "POST", "/logging?level=debug")
        assert status == 200 and b"zt: debug\n" in body
        assert zt.level == logging.DEBUG
        assert ask(admin, "POST", "/logging?level=access=warn")[0] == 200
        assert logging.getLogger("zt.access").level == logging.WARNING
    finally:
        zt.setLevel(before)
        logging.getLogger("zt.access").setLevel(logging.NOTSET)


def test_admin_logging_refuses_unknown_scopes_and_creates_no_logger() -> None:
    admin = Admin(dict, lambda: None)
    names = set(logging.root.manager.loggerDict)
    status, body = ask(admin, "POST", "/logging?level=foo.bar=debug")
    assert status == 400
    assert body.startswith(b"scope: got 'foo.bar', expected one of access, ztunnel, ")
    refused = ("level=zt.nope=debug", "level=access=debug&evil=info", "level=debug,zt.x.y=info")
    for query in refused:
        assert ask(admin, "POST", f"/logging?{query}")[0] == 400
    status, body = ask(admin, "GET", "/logging")  # listing reads levels, creates nothing
    assert status == 200 and body.startswith(b"current log level is ") and b"\nzt: " in body
    assert set(logging.root.manager.loggerDict) == names
    assert logging.getLogger("zt").level == logging.NOTSET  # the refused requests changed nothing


def test_config_dump_is_get_only() -> None:
    admin = Admin(lambda: {"a": 1}, lambda: None)
    assert ask(admin, "POST", "/config_dump")[0] == 405


def test_admin_refuses_posts_from_browser_pages() -> None:
    quits: list[int] = []
    admin = Admin(dict, lambda: quits.append(1))
    raw = b"POST /quitquitquit HTTP/1.1\r\nHost: 127.0.0.1:15000\r\nOrigin: https://evil.example\r\n\r\n"
    status, body = asyncio.run(_ask(admin, raw))
    assert (
        status == 403
        and body == b"origin: got 'https://evil.example', expected none (not from a browser)\n"
    )
    assert quits == []
