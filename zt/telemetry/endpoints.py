"""The node's operational endpoints: /metrics (:15020), /healthz/ready (:15021), admin (:15000)."""

from __future__ import annotations

import asyncio
import base64
import json
import platform
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import zt
from zt.identity.certs import WorkloadCert
from zt.telemetry import logsetup
from zt.telemetry.http import Request, Response
from zt.telemetry.metrics import CONTENT_TYPE, Registry


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


# ztunnel serves one exposition at both paths on its metrics port (15020); /stats/prometheus is
# Envoy's path, which scrapers written for sidecars ask for.
METRICS_PATHS = ("/metrics", "/stats/prometheus")


def metrics_handler(registry: Registry) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        if request.path not in METRICS_PATHS:
            return Response.text(404, f"not found: try {' or '.join(METRICS_PATHS)}\n")
        # Collector values are taken here, on the loop that owns them; formatting the text (tens
        # of ms for a thousand series) runs on a thread, so a scrape does not stall the proxy.
        body = await asyncio.to_thread(registry.prepare())
        return Response(200, body, CONTENT_TYPE)

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


def build_info() -> dict[str, str]:
    """`version` of /config_dump: ztunnel's BuildInfo fields that zt has (python in place of
    rust, the TLS library as the crypto provider)."""
    return {
        "version": zt.__version__,
        "pythonVersion": platform.python_version(),
        "cryptoProvider": ssl.OPENSSL_VERSION,
    }


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cert_entries(pem: bytes) -> list[dict[str, str]]:
    """ztunnel's CertDump per certificate: the PEM base64-encoded (as ztunnel writes it), the
    serial in decimal, the validity in RFC 3339 UTC."""
    if not pem:
        return []
    return [
        {
            "pem": base64.b64encode(cert.public_bytes(Encoding.PEM)).decode(),
            "serialNumber": str(cert.serial_number),
            "validFrom": _rfc3339(cert.not_valid_before_utc),
            "expirationTime": _rfc3339(cert.not_valid_after_utc),
        }
        for cert in x509.load_pem_x509_certificates(pem)
    ]


def certificate_dump(
    held: Iterable[tuple[str, str, WorkloadCert | None]],
) -> list[dict[str, object]]:
    """`certificates` of /config_dump, ztunnel's CertsDump: one entry per identity the node
    holds, with its state, the leaf and intermediates (`certChain`) and the trust bundle
    (`rootCerts`)."""
    return [
        {
            "identity": identity,
            "state": state,
            "certChain": _cert_entries(cert.cert_pem + cert.chain_pem) if cert else [],
            "rootCerts": _cert_entries(cert.roots_pem) if cert else [],
        }
        for identity, state, cert in sorted(held, key=lambda entry: entry[0])
    ]


# ztunnel's admin index, as plain text: path, then what it does
ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("/config_dump", "dump the current configuration: workloads, services, policies, "
     "certificates, version, and this node's pods, capture and workers (GET)"),
    ("/logging", "query (GET) or change (POST ?level=info,access=debug) logging levels"),
    ("/quitquitquit", "drain and shut down the node (POST)"),
)  # fmt: skip
INDEX = "".join(f"{path:<16}{text}\n" for path, text in ENDPOINTS)
LOGGING_HELP = (
    "usage: GET /logging (list the levels); POST /logging?level=<level>[,<scope>=<level>...] "
    "(change them); POST /logging?reset[&level=...] (back to the start-up levels first)\n"
    f"levels: {', '.join(logsetup.LEVELS)}; scopes: {', '.join(logsetup.ZTUNNEL_SCOPES)}, "
    "or a zt scope (GET /logging lists them)\n"
)


class Admin:
    """127.0.0.1:15000 (loopback only unless forced, zt/node/options.py), ztunnel's admin:
    `/` lists the endpoints, `/config_dump` (GET, JSON), `/logging` (GET, or POST without a
    query, lists the levels; POST ?level=info,access=debug changes them, ?reset restores the
    start-up levels first), `/quitquitquit` (POST: drain and exit, as Envoy's admin does). Every
    change is a POST, so a page that makes a browser GET a local URL changes nothing, and a POST
    that carries an Origin header is refused, so a page can't POST one either (the Fetch
    standard, "append a request `Origin` header": a browser adds it whenever the method is
    neither GET nor HEAD; curl and scripts don't)."""

    def __init__(
        self,
        config_dump: Callable[[], object],
        quit: Callable[[], None],
        levels_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._config_dump = config_dump
        self._quit = quit
        self._levels_changed = levels_changed  # the node hands new levels to its worker processes

    def __call__(self, request: Request) -> Response:
        if request.method == "POST" and "origin" in request.headers:
            origin = request.headers["origin"][:80]
            return Response.text(
                403, f"origin: got {origin!r}, expected none (not from a browser)\n"
            )
        if request.path == "/":
            return Response.text(200, INDEX)
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
        return Response.text(404, f"not found: {request.path[:80]!r}; the endpoints:\n{INDEX}")

    def _logging(self, request: Request) -> Response:
        if request.method == "GET" and not request.query:
            return Response.text(200, logsetup.current_levels())
        if request.method != "POST":
            return Response.text(405, LOGGING_HELP)
        unknown = sorted(set(request.query) - {"level", "reset"})
        if unknown:
            name = unknown[0][:80]
            return Response.text(
                400, f"query: got {name!r}, expected level or reset\n{LOGGING_HELP}"
            )
        try:
            logsetup.set_levels(request.query.get("level", ""), reset="reset" in request.query)
        except logsetup.LogLevelError as exc:
            return Response.text(exc.http_status, f"{exc}\n{LOGGING_HELP}")
        self._levels_changed()
        return Response.text(200, logsetup.current_levels())
