"""The node's operational endpoints: /metrics (:15020), /healthz/ready (:15021), admin (:15000)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from zt.telemetry.http import Request, Response
from zt.telemetry.metrics import Registry

LEVELS = ("debug", "info", "warning", "error", "critical")


class Readiness:
    """Ready only once every named condition holds (config, certificates, capture...)."""

    def __init__(self, *conditions: str) -> None:
        self._state = dict.fromkeys(conditions, False)
        self._lock = threading.Lock()

    def set(self, condition: str, ok: bool = True) -> None:
        with self._lock:
            if condition not in self._state:
                raise KeyError(f"readiness condition {condition!r} was never declared")
            self._state[condition] = ok

    def missing(self) -> list[str]:
        with self._lock:
            return [name for name, ok in self._state.items() if not ok]

    @property
    def ready(self) -> bool:
        return not self.missing()


def metrics_handler(registry: Registry) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        if request.path != "/metrics":
            return Response.text(404, "not found: try /metrics\n")
        return Response(200, registry.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    return handle


def readiness_handler(readiness: Readiness) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        if request.path != "/healthz/ready":
            return Response.text(404, "not found: try /healthz/ready\n")
        missing = readiness.missing()
        if missing:
            return Response.text(503, f"not ready: waiting for {', '.join(missing)}\n")
        return Response.text(200, "ready\n")

    return handle


def _set_levels(query: dict[str, str]) -> str | None:
    """`?level=debug` sets every zt logger; `?zt.access=warning` one logger. None, or an error."""
    for name, level in query.items():
        if level.lower() not in LEVELS:
            return f"{name}: got {level!r}, expected one of {', '.join(LEVELS)}"
    for name, level in query.items():
        logger = logging.getLogger("zt" if name == "level" else name)
        logger.setLevel(level.upper())
    return None


def _levels() -> str:
    names = ["zt", *sorted(n for n in logging.root.manager.loggerDict if n.startswith("zt."))]
    lines = [
        f"{n}: {logging.getLevelName(logging.getLogger(n).getEffectiveLevel()).lower()}"
        for n in names
    ]
    return "\n".join(lines) + "\n"


class Admin:
    """127.0.0.1:15000: `/config_dump` (JSON), `/logging` (GET levels, POST ?level= or ?logger=),
    `/quitquitquit` (POST: drain and exit, as Envoy's admin does)."""

    def __init__(self, config_dump: Callable[[], object], quit: Callable[[], None]) -> None:
        self._config_dump = config_dump
        self._quit = quit

    def __call__(self, request: Request) -> Response:
        if request.path == "/config_dump":
            body = json.dumps(self._config_dump(), indent=2, default=str).encode()
            return Response(200, body, "application/json")
        if request.path == "/logging":
            if request.method == "POST" and request.query:
                error = _set_levels(request.query)
                if error:
                    return Response.text(400, error + "\n")
            return Response.text(200, _levels())
        if request.path == "/quitquitquit":
            if request.method != "POST":
                return Response.text(405, "use POST /quitquitquit\n")
            self._quit()
            return Response.text(200, "OK\n")
        return Response.text(404, "not found: /config_dump, /logging, /quitquitquit\n")
