"""Building and strictly parsing HBONE CONNECT requests and responses.

docs/design.md §2: the request is `:method CONNECT` with `:authority <dst-ip>:<dst-port>` (`[v6]:port`
for IPv6), or `<service hostname>:<service port>` as ztunnel accepts it (the inbound side resolves
the name: zt/state/hostnames.py), and no `:scheme`, `:path` or `:protocol`. ztunnel adds `baggage`
(zt/hbone/baggage.py), `forwarded: for="<src>"` (`for="<src>";host=<service hostname>` when the
app addressed a service: its outbound.rs `build_forwarded`) and `traceparent`; zt sends them and
never requires them (Envoy sends none). A 200 may carry the destination's `baggage`.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

from zt.addr import Destination, HostPort, SocketAddr, parse_hostname
from zt.errors import AddressError
from zt.hbone.errors import BadConnectRequest, HboneUsageError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Headers = list[tuple[bytes, bytes]]

# Response header carrying the short reason of a non-200 answer (HTTP/2 has no reason phrase).
REASON_HEADER = b"zt-reason"

_PORT = re.compile(r"[1-9][0-9]{0,4}")
_DOTTED_DIGITS = re.compile(r"[0-9.]*")  # parsed as an IPv4 literal, never as a name
AUTHORITY_FORM = (
    "ip:port, [ipv6]:port or hostname:port, with an IP literal or an RFC 1123 hostname"
    " (labels of 1..63 letters, digits, '-'; 253 characters in all) and port 1..65535"
)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# RFC 9110 §5.5: field-value = *field-content; visible ASCII, SP and HTAB, no leading/trailing WS.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# RFC 7239 §4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ), pair = token "="
# value, value = token / quoted-string. We keep the first `for=` node.
_FORWARDED_PAIR = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,\s"]+)\s*')
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
# RFC 9113 §8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing connection-specific
# header fields [...] Any message containing connection-specific header fields MUST be treated as
# malformed."
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


@dataclass(frozen=True)
class ConnectRequest:
    """One HBONE CONNECT: where to (an IP literal and a port, or a service hostname and its port)
    plus optional context headers."""

    # the destination: an address (one type from the original destination to the dial), or a
    # mesh name the receiving side resolves
    authority: Destination
    baggage: str | None = None
    forwarded_for: str | None = None
    traceparent: str | None = None
    # ztunnel's x-forwarded-network: set by a gateway that carried the tunnel from another network
    forwarded_network: str | None = None
    # the service the client meant (`forwarded: ...;host=<hostname>`): the receiver's telemetry
    # names it instead of guessing one of the pod's services from the port (ztunnel's
    # guess_inbound_service)
    forwarded_host: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.authority, SocketAddr | HostPort):
            raise BadConnectRequest("authority", self.authority, "a SocketAddr or a HostPort")
        if not 1 <= self.authority.port <= 65535:
            raise BadConnectRequest("authority port", self.authority.port, "1..65535")
        for name in (
            "baggage",
            "forwarded_for",
            "traceparent",
            "forwarded_network",
            "forwarded_host",
        ):
            value = getattr(self, name)
            if value is not None and not _FIELD_VALUE.fullmatch(_latin1(value)):
                raise BadConnectRequest(name, value, "a non-empty header value without CR/LF/NUL")
        if self.forwarded_for is not None and (
            '"' in self.forwarded_for or "\\" in self.forwarded_for
        ):
            raise BadConnectRequest("forwarded_for", self.forwarded_for, "ip:port without quotes")
        if self.forwarded_host is not None and not _TOKEN.fullmatch(self.forwarded_host):
            raise BadConnectRequest("forwarded_host", self.forwarded_host, "a hostname (a token)")

    @property
    def authority_text(self) -> str:
        """`ip:port`, `[v6]:port` or `hostname:port`, as sent in `:authority`."""
        return str(self.authority)

    def headers(self) -> Headers:
        """The request header block, pseudo-headers first (RFC 9113 §8.3)."""
        out: Headers = [(b":method", b"CONNECT"), (b":authority", self.authority_text.encode())]
        # RFC 9110 §5.5: field values are octets; "historically, HTTP allowed field content with
        # text in the ISO-8859-1 charset". Latin-1 maps them 1:1 both ways.
        if self.baggage is not None:
            out.append((b"baggage", _latin1(self.baggage)))
        forwarded = self.forwarded_value()
        if forwarded is not None:
            out.append((b"forwarded", _latin1(forwarded)))
        if self.traceparent is not None:
            out.append((b"traceparent", _latin1(self.traceparent)))
        if self.forwarded_network is not None:
            out.append((b"x-forwarded-network", _latin1(self.forwarded_network)))
        return out

    def forwarded_value(self) -> str | None:
        """ztunnel's `build_forwarded`: `for="<src>"`, then `;host=<hostname>` (a token, so
        unquoted, RFC 7239 §4) when the client addressed a service."""
        parts = []
        if self.forwarded_for is not None:
            parts.append(f'for="{self.forwarded_for}"')
        if self.forwarded_host is not None:
            parts.append(f"host={self.forwarded_host}")
        return ";".join(parts) or None

    @classmethod
    def parse(cls, headers: Iterable[tuple[bytes, bytes]]) -> ConnectRequest:
        """Validate a received header block; raise BadConnectRequest naming the header at fault."""
        pseudo, regular = _split_header_block(headers)
        method = pseudo.get(b":method")
        if method != b"CONNECT":
            raise BadConnectRequest(":method", _text(method), "CONNECT")
        for name in (b":scheme", b":path", b":protocol"):
            # docs/design.md §2: no `:scheme`, `:path`, `:protocol` (ordinary CONNECT, RFC 9113 §8.5).
            if name in pseudo:
                raise BadConnectRequest(name.decode(), _text(pseudo[name]), "absent in CONNECT")
        authority = pseudo.get(b":authority")
        if authority is None:
            raise BadConnectRequest(":authority", None, AUTHORITY_FORM)
        forwarded_for, forwarded_host = _forwarded(_joined(regular, b"forwarded", ","))
        return cls(
            authority=parse_authority(authority),
            baggage=_joined(regular, b"baggage", ","),
            forwarded_for=forwarded_for,
            traceparent=_valid_traceparent(regular.get(b"traceparent")),
            forwarded_network=_first(regular.get(b"x-forwarded-network")),
            forwarded_host=forwarded_host,
        )


def format_hostport(ip: IpAddress, port: int) -> str:
    """`ip:port`, IPv6 in brackets (RFC 3986 §3.2.2)."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_authority(raw: bytes) -> Destination:
    """Strict `:authority`: an IP literal and a port 1..65535, or a hostname (RFC 1123 §2.1) and a
    port. Zones, userinfo, non-ASCII, a trailing dot, a numeric last label (`1.2.3`: an address
    gone wrong, not a name) and ports with leading zeros or signs are refused."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadConnectRequest(":authority", raw, AUTHORITY_FORM) from None
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        raise BadConnectRequest(":authority", text, AUTHORITY_FORM)
    bracketed = host.startswith("[") and host.endswith("]")
    if not bracketed and ":" not in host and not _DOTTED_DIGITS.fullmatch(host):
        # ztunnel (proxy.rs HboneAddress): not a socket address, so a host name and a port
        try:
            return HostPort(parse_hostname(host, field=":authority"), int(port))
        except AddressError:
            raise BadConnectRequest(":authority", text, AUTHORITY_FORM) from None
    literal = host[1:-1] if bracketed else host
    if "%" in literal or (":" in literal) != bracketed:
        # IPv6 must be bracketed and IPv4 must not be; zone ids are meaningless across nodes.
        raise BadConnectRequest(":authority", text, AUTHORITY_FORM)
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        raise BadConnectRequest(":authority", text, AUTHORITY_FORM) from None
    return SocketAddr(ip, int(port))


def new_traceparent(
    random_bytes: Callable[[int], bytes] = secrets.token_bytes, *, sampled: bool = False
) -> str:
    """A fresh W3C traceparent `00-<trace-id>-<parent-id>-<flags>`.

    W3C Trace Context §3.2.2.3: "All bytes as zero (00000000000000000000000000000000) is considered
    an invalid value" (same for parent-id), so an all-zero draw gets its last bit set.
    """
    trace_id = bytearray(random_bytes(16))
    parent_id = bytearray(random_bytes(8))
    for field in (trace_id, parent_id):
        if not any(field):
            field[-1] = 1
    return f"00-{trace_id.hex()}-{parent_id.hex()}-{'01' if sampled else '00'}"


def response_headers(status: int, reason: str = "", baggage: str | None = None) -> Headers:
    """`:status` plus, for failures, our short reason; a 200 may carry the answering workload's
    `baggage` (ztunnel's inbound `build_response`)."""
    if not 200 <= status <= 599:  # RFC 9110 §15: a final status; zt sends no 1xx
        raise HboneUsageError(f"status: got {status!r}, expected a final status 200..599")
    out: Headers = [(b":status", str(status).encode())]
    # Only visible ASCII and inner spaces, at most 128 bytes: a reason must never break the header.
    text = "".join(c if " " <= c <= "~" else "?" for c in reason[:128]).strip()
    if status != 200 and text:
        out.append((REASON_HEADER, text.encode("ascii")))
    if status == 200 and baggage is not None:
        if not _FIELD_VALUE.fullmatch(_latin1(baggage)):
            raise HboneUsageError(f"baggage: got {baggage!r}, expected a header value")
        out.append((b"baggage", _latin1(baggage)))
    return out


def response_baggage(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The `baggage` lines of a response joined into one list (RFC 9110 §5.3), None without any;
    what they say is read by zt/hbone/baggage.py, leniently."""
    values = [v.decode("latin-1") for name, v in headers if name == b"baggage"]
    return ",".join(values) if values else None


def parse_response(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, str]:
    """(status, reason) of a response; the reason falls back to the standard phrase."""
    status = 0
    reason = ""
    for name, value in headers:
        if name == b":status" and value.isdigit() and len(value) == 3:
            status = int(value)
        elif name == REASON_HEADER:
            reason = value.decode("ascii", "replace")
    if not reason and status != 200:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return status, reason


def _split_header_block(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], dict[bytes, list[bytes]]]:
    """Check RFC 9113 §8.2-8.3 framing rules; return pseudo-headers and regular headers."""
    pseudo: dict[bytes, bytes] = {}
    regular: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name.lstrip(b":") if name.startswith(b":") else name):
            # §8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20, 0x41-0x5a
            # [uppercase], or 0x7f-0xff".
            raise BadConnectRequest("header name", _text(name), "a lowercase token")
        if value and not _FIELD_VALUE.fullmatch(value):
            raise BadConnectRequest(
                name.decode("latin-1"), _text(value), "a field value without CR/LF/NUL"
            )
        if name.startswith(b":"):
            # §8.3: "All pseudo-header fields MUST appear in a field block before all regular field
            # lines"; pseudo-headers "MUST NOT appear more than once".
            if regular or name in pseudo:
                raise BadConnectRequest(
                    name.decode("latin-1"), _text(value), "once, before regular headers"
                )
            if name not in (b":method", b":authority", b":scheme", b":path", b":protocol"):
                raise BadConnectRequest(
                    name.decode("latin-1"), _text(value), "a request pseudo-header"
                )
            pseudo[name] = value
        elif name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise BadConnectRequest(
                name.decode("latin-1"), _text(value), "no connection-specific header"
            )
        else:
            regular.setdefault(name, []).append(value)
    return pseudo, regular


def _joined(regular: dict[bytes, list[bytes]], name: bytes, sep: str) -> str | None:
    values = regular.get(name)
    if not values:
        return None
    return sep.join(v.decode("latin-1") for v in values)


def _forwarded(value: str | None) -> tuple[str | None, str | None]:
    """The first `for=` node and the first `host=` of a `forwarded` header (RFC 7239), unquoted;
    None when absent. A host that is not a token (RFC 7239 §5.3: "host = Host", a name or an
    address and port) is ignored: ztunnel only matches it against the pod's own services."""
    if value is None:
        return None, None
    found: dict[str, str] = {}
    for element in value.split(","):
        for pair in element.split(";"):
            if not pair.strip():
                continue
            match = _FORWARDED_PAIR.fullmatch(pair)
            if match is None:
                raise BadConnectRequest("forwarded", value, 'pairs like for="ip:port"')
            node = match.group(2)
            node = node[1:-1].replace("\\", "") if node.startswith('"') else node
            found.setdefault(match.group(1).lower(), node)
    host = found.get("host")
    return found.get("for"), host if host is not None and _TOKEN.fullmatch(host) else None


def _valid_traceparent(values: list[bytes] | None) -> str | None:
    """A well-formed traceparent, else None.

    W3C Trace Context §4.3: "If the vendor failed to parse traceparent, it MUST NOT attempt to parse
    tracestate" and starts a new trace: an invalid traceparent is ignored, never a 400.
    """
    if values is None or len(values) != 1:
        return None
    text = values[0].decode("latin-1")
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    if (
        version == "ff"
        or (version == "00" and rest)
        or not int(trace_id, 16)
        or not int(parent_id, 16)
    ):
        return None
    return text


def _first(values: list[bytes] | None) -> str | None:
    """The first value of a header that is read once (as http's HeaderMap::get); empty: absent."""
    return values[0].decode("latin-1") or None if values else None


def _latin1(value: str) -> bytes:
    """Octets of a header value; text beyond Latin-1 maps to NUL, which validation refuses."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return b"\x00"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
