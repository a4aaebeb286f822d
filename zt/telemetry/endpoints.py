"""The node's operational endpoints: /metrics (:15020), /healthz/ready (:15021), admin (:15000)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from zt.telemetry.http import Request, Response
from zt.telemetry.logsetup import LOGGER_SCOPES
from zt.telemetry.metrics import Registry

LEVELS = ("debug", "info", "warning", "error", "critical")


class Readiness:
    """Ready only once every named condition holds (config, certificates, capture...)."""

    def __init__(self, *conditions: str) -> None:
        self._state = dict.fromkeys(conditions, False)
        self._notes: dict[str, str] = {}
        self._lock = threading.Lock()

    def note(self, condition: str, text: str | None) -> None:
        """Detail shown with the verdict without changing it (a condition that holds but has a
        story, e.g. "config: last reload rejected, serving generation 3"); None clears it."""
        with self._lock:
            if text is None:
                self._notes.pop(condition, None)
            else:
                self._notes[condition] = text

    def details(self) -> str:
        """One `condition: note` line per note, for the readiness body."""
        with self._lock:
            return "".join(f"{name}: {text}\n" for name, text in sorted(self._notes.items()))

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
            waiting = f"not ready: waiting for {', '.join(missing)}\n"
            return Response.text(503, waiting + readiness.details())
        return Response.text(200, "ready\n" + readiness.details())

    return handle


def _set_levels(query: dict[str, str]) -> str | None:
    """`?level=debug` sets the `zt` scope; `?zt.access=warning` one scope. None, or an error.
    Only the scopes in LOGGER_SCOPES are accepted: a name from the request never creates a logger
    (the logging module keeps every logger ever named, for the life of the process)."""
    for name, level in query.items():
        scope = "zt" if name == "level" else name
        if scope not in LOGGER_SCOPES:
            return f"scope: got {name!r}, expected level or one of {', '.join(LOGGER_SCOPES)}"
        if level.lower() not in LEVELS:
            return f"{name}: got {level!r}, expected one of {', '.join(LEVELS)}"
    for name, level in query.items():
        logging.getLogger("zt" if name == "level" else name).setLevel(level.upper())
    return None


def _effective_level(name: str) -> str:
    """The level `name` logs at, read without creating it (a scope whose module isn't loaded yet
    has no logger: its nearest existing ancestor decides)."""
    loggers = logging.root.manager.loggerDict
    while name:
        logger = loggers.get(name)
        if isinstance(logger, logging.Logger):
            return logging.getLevelName(logger.getEffectiveLevel()).lower()
        name = name.rpartition(".")[0]
    return logging.getLevelName(logging.root.level).lower()


def _levels() -> str:
    return "".join(f"{name}: {_effective_level(name)}\n" for name in LOGGER_SCOPES)


class Admin:
    """127.0.0.1:15000 (loopback only unless forced, zt/node/options.py): `/config_dump` (GET,
    JSON), `/logging` (GET lists the levels; POST ?level=L sets `zt`, ?<scope>=L one scope),
    `/quitquitquit` (POST: drain and exit, as Envoy's admin does). Every change is a POST, so a
    page that makes a browser GET a local URL changes nothing, and a POST that carries an Origin
    header is refused, so a page can't POST one either (the Fetch standard, "append a request
    `Origin` header": a browser adds it whenever the method is neither GET nor HEAD; curl and
    scripts don't)."""

    def __init__(self, config_dump: Callable[[], object], quit: Callable[[], None]) -> None:
        self._config_dump = config_dump
        self._quit = quit

    def __call__(self, request: Request) -> Response:
        if request.method == "POST" and "origin" in request.headers:
            origin = request.headers["origin"][:80]
            return Response.text(
                403, f"origin: got {origin!r}, expected none (not from a browser)\n"
            )
        if request.path == "/config_dump":
            if request.method != "GET":
                return Response.text(405, "use GET /config_dump\n")
            body = json.dumps(self._config_dump(), indent=2, default=str).encode()
            return Response(200, body, "application/json")
        if request.path == "/logging":
            return self._logging(request)
        if request.path == "/quitquitquit":
            if request.method != "POST":
                return Response.text(405, "use POST /quitquitquit\n")
            self._quit()
            return Response.text(200, "OK\n")
        return Response.text(404, "not found: /config_dump, /logging, /quitquitquit\n")

    @staticmethod
    def _logging(request: Request) -> Response:
        if request.method == "GET" and not request.query:
            return Response.text(200, _levels())
        if request.method != "POST":
            return Response.text(
                405, "use GET /logging to list, POST /logging?<scope>=<level> to set\n"
            )
        error = _set_levels(request.query)
        if error:
            return Response.text(400, error + "\n")
        return Response.text(200, _levels())
