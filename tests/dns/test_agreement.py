"""Every place zt takes a mesh name agrees on it (zt/state/names.py is the one resolver): the DNS
proxy's answer, `zt route --dst`, a SOCKS5 domain name and an HBONE `:authority`.

The client is tests/dns/conftest.py's pod `default/client`. Outbound, the address `zt route` and
SOCKS5 dial is one of the addresses the pod's DNS query is answered; a name the DNS proxy denies
(NXDOMAIN) or forwards is no mesh name for them either. Inbound, a peer sends full hostnames: short
and search-suffixed names are unknown there, on purpose (they mean something only in the client's
namespace), and a VIP-less service outside `svc.<cluster domain>`, which the DNS proxy forwards
as ztunnel does, still names its ports.
"""

from __future__ import annotations

import json
from pathlib import Path

import dns.message
import dns.rcode
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.dns.conftest import CLIENT, MESH, addresses, mesh_snapshot
from zt.addr import HostPort, SocketAddr
from zt.dns.cache import Cache
from zt.dns.core import DnsCore, Forward, Reply
from zt.dns.wire import Transport
from zt.errors import ZtError
from zt.hbone.request import parse_authority
from zt.proxy.socks5 import ATYP_DOMAIN, REP_HOST_UNREACHABLE, SocksError, _resolved, parse_connect
from zt.state import HostnameUnroutable, Snapshot, UnknownHostname, resolve, resolve_inbound

PORT = 9080
# name -> (the DNS proxy's result, known to an inbound :authority)
TABLE = {
    # a service: its FQDN, the client namespace's short forms, a search suffix glibc appends
    "reviews.default.svc.cluster.local": ("mesh", True),
    "reviews": ("mesh", False),
    "reviews.default": ("mesh", False),
    "reviews.default.svc": ("mesh", False),
    "reviews.default.svc.cluster.local.default.svc.cluster.local": ("mesh", False),
    "Reviews.Default.SVC.cluster.local": ("mesh", True),
    # the same hostname in two namespaces: the client's own
    "echo.default.svc.cluster.local": ("mesh", True),
    "echo.shop": ("mesh", False),
    # headless: a healthy endpoint; a workload hostname and its pod short form
    "db.default.svc.cluster.local": ("mesh", True),
    "web-0.web.default.svc.cluster.local": ("mesh", True),
    "web-0.web": ("mesh", False),
    "web-0.web.default.svc.cluster.local.svc.cluster.local": ("mesh", False),
    # outside the cluster domain: exact and wildcard hostnames
    "api.example.com": ("mesh", True),
    "any.wild.example": ("mesh", True),
    # unknown: NXDOMAIN in a mesh domain, forwarded elsewhere
    "nope.default.svc.cluster.local": ("nxdomain", False),
    "nope": ("forward", False),  # one label: in no mesh domain (the stub appends its suffixes)
    "www.example.org": ("forward", False),
    "novip.example.net": ("forward", True),
}


@pytest.fixture(scope="module")
def mesh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "mesh.yaml"
    path.write_text(json.dumps(MESH))  # JSON is YAML
    return path


def _dns(snapshot: Snapshot, name: str) -> tuple[str, set[str]]:
    core = DnsCore(lambda: snapshot, CLIENT, Cache())
    command = core.handle(dns.message.make_query(name, "A").to_wire(), Transport.UDP, 0.0)
    if isinstance(command, Forward):
        return "forward", set()
    assert isinstance(command, Reply)
    answer = dns.message.from_wire(command.wire)
    rcode = answer.rcode()
    return ("nxdomain" if rcode == dns.rcode.NXDOMAIN else "mesh"), addresses(answer)


def _route(mesh_file: Path, name: str) -> str | None:
    argv = ["route", "--config", str(mesh_file), "--src", CLIENT, "--dst", f"{name}:{PORT}"]
    result = CliRunner().invoke(app, [*argv, "--json"])
    if result.exit_code != 0:
        assert result.exit_code == 2 and "expected a service or workload hostname" in result.output
        return None
    address: str = json.loads(result.output)["resolved"]["address"]
    return address


def _socks(snapshot: Snapshot, name: str) -> str | None:
    raw = name.encode()
    request = bytes([5, 1, 0, ATYP_DOMAIN, len(raw)]) + raw + PORT.to_bytes(2, "big")
    command = parse_connect(request)
    assert command is not None
    client = snapshot.by_uid[CLIENT]
    try:
        return str(
            _resolved(command.destination, lambda n: resolve(snapshot, n, client).destination)
        )
    except SocksError as exc:
        assert exc.reply == REP_HOST_UNREACHABLE
        return None


def _authority(snapshot: Snapshot, name: str) -> bool:
    try:
        authority = parse_authority(f"{name}:{PORT}".encode())
        assert isinstance(authority, HostPort)
        resolve_inbound(snapshot, authority, snapshot.by_uid[CLIENT], None)
    except UnknownHostname:
        return False
    except HostnameUnroutable:  # a known name whose service maps no such port
        return True
    return True


@pytest.mark.parametrize("name", TABLE)
def test_the_four_entry_points_agree(snapshot: Snapshot, mesh_file: Path, name: str) -> None:
    result, inbound = TABLE[name]
    got, answered = _dns(snapshot, name)
    assert got == result
    routed, socks = _route(mesh_file, name), _socks(snapshot, name)
    assert routed == socks
    if answered:
        assert routed is not None and SocketAddr.parse(routed).port == PORT
        assert str(SocketAddr.parse(routed).ip) in answered
    else:
        assert routed is None
    assert _authority(snapshot, name) is inbound


def test_a_workload_hostname_authority_leads_to_that_workload(snapshot: Snapshot) -> None:
    authority = HostPort("web-0.web.default.svc.cluster.local", 8080)
    web = snapshot.by_uid["default/web-0"]
    resolved = resolve_inbound(snapshot, authority, web, None)
    assert resolved.destination == SocketAddr.parse("10.1.0.9:8080") and resolved.workload is web
    # named on another pod: its own address, which that pod's inbound refuses as not its own
    elsewhere = resolve_inbound(snapshot, authority, snapshot.by_uid[CLIENT], None)
    assert elsewhere.destination.ip not in snapshot.by_uid[CLIENT].ips


def test_unknown_names_say_what_was_tried(snapshot: Snapshot) -> None:
    with pytest.raises(ZtError, match=r"tried nope, nope\.default\.svc\.cluster\.local"):
        resolve(snapshot, HostPort("nope", 80), snapshot.by_uid[CLIENT])


def test_a_capitalized_hostname_in_the_mesh_file_is_one_name_everywhere(tmp_path: Path) -> None:
    """The schema lowercases hostnames (RFC 4343): `Reviews.default...` in a mesh file is found
    by DNS, `zt route --dst`, SOCKS5 and `:authority`, whatever case each is asked in."""
    services = [
        {**s, "hostname": "Reviews.default.svc.cluster.local"} if s["name"] == "reviews" else s
        for s in MESH["services"]
    ]
    doc = {**MESH, "services": services}
    path = tmp_path / "mesh.yaml"
    path.write_text(json.dumps(doc))
    snapshot = mesh_snapshot(doc)
    for name in ("reviews.default.svc.cluster.local", "REVIEWS.default.svc.cluster.local"):
        assert _dns(snapshot, name) == ("mesh", {"10.96.0.20"})
        assert _route(path, name) == _socks(snapshot, name) == f"10.96.0.20:{PORT}"
        assert _authority(snapshot, name)
