"""`zt run`'s options, shared by the leader (zt/node/daemon.py) and its follower worker processes
(zt/node/worker.py), which receive them as JSON on their command line.

Two modes, exactly one per node: file mode (`--config FILE`: the mesh file, certificates from the CA
directory on this host) and fleet mode (`--etcd URLS`: the mesh and certificates come through etcd,
with the credentials `zt node join` left in `--state-dir`; docs/fleet.md)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from zt.addr import SocketAddr
from zt.capture import Mode
from zt.dns.errors import UpstreamConfigError
from zt.dns.upstream import Upstream, parse_upstream
from zt.errors import UsageError
from zt.node.reconcile import DEFAULT_GRACE
from zt.proxy.accept import DEFAULT_LIMITS, AcceptLimits
from zt.proxy.ktls import MODES as KTLS_MODES
from zt.state.loopguard import illegal_ports as loopguard_ports

MAX_WORKERS = 64
DEFAULT_STATE_DIR = Path("/var/lib/zt/node")  # where `zt node join` writes a node's credentials
MODE_FLAGS = "--config FILE (file mode) or --etcd URLS (fleet mode)"
Source = Literal["file", "fleet"]


class BadWorkerCount(UsageError):
    reason = "bad_worker_count"


class ModeConflict(UsageError):
    """`zt run` needs exactly one of --config and --etcd (and their mode's flags only)."""

    reason = "bad_mode"


class RemoteAdminRefused(UsageError):
    """The admin endpoint can stop the node and change its logging: it stays on loopback."""

    reason = "remote_admin_refused"


def is_loopback(addr: SocketAddr) -> bool:
    ip = addr.ip
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


@dataclass(frozen=True)
class NodeOptions:
    node: str
    config: Path | None = None  # file mode: the mesh file
    # fleet mode: etcd endpoints (overriding the state dir's), the state dir `zt node join` wrote,
    # and the etcd TLS files overriding the state dir's
    etcd: tuple[str, ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    init_ca: bool = False  # file mode: create a CA in ca_dir when there is none
    ca_dir: Path = Path("/var/lib/zt/ca")
    trust_domain: str = "cluster.local"
    capture: Mode = "connect"
    pin_dir: Path | None = Path("/sys/fs/bpf/zt")
    pod_socket: Path = Path("/run/zt/pods.sock")
    metrics: SocketAddr = field(default_factory=lambda: SocketAddr.parse("[::]:15020"))
    readiness: SocketAddr = field(default_factory=lambda: SocketAddr.parse("[::]:15021"))
    admin: SocketAddr = field(default_factory=lambda: SocketAddr.parse("127.0.0.1:15000"))
    admin_allow_remote: bool = False  # serve admin on a non-loopback address (it has no auth)
    log_format: str = "text"
    drain_deadline: float = 10.0
    config_poll: float = 1.0
    # seconds a served pod may be missing from the mesh file before it is drained and unenrolled
    # (a file caught half-written must not unenroll anyone); the leader decides removals
    pod_grace: float = DEFAULT_GRACE
    # seconds from accept() to an authenticated peer (first byte, TLS handshake, peer check)
    handshake_timeout: float = DEFAULT_LIMITS.handshake_timeout
    socks5: bool = False
    workers: int = 1  # data-plane processes: this one (the leader) plus workers - 1 followers
    ktls: str = "auto"  # kernel TLS for HBONE: auto | on | off (zt/proxy/ktls.py says why auto)
    # each pod's DNS proxy (docs/dns.md "In the node"): capture steers its port-53 traffic there;
    # no upstreams given: the node's /etc/resolv.conf
    dns: bool = True
    dns_upstreams: tuple[Upstream, ...] = ()
    splice: bool = False  # DATA payloads spliced into kTLS sockets (zt/proxy/zerocopy.py)
    # deliver to apps from the caller's IP, as ztunnel (zt/capture/origsrc.py); off: from the
    # pod's own IP
    original_source: bool = True

    def __post_init__(self) -> None:
        self._check_mode()
        self._check_ktls()
        if self.dns_upstreams and not self.dns:
            raise UsageError(
                f"--dns-upstream: got {', '.join(map(str, self.dns_upstreams))} with --no-dns, "
                "expected it only with the DNS proxy on (--dns)"
            )
        if not is_loopback(self.admin) and not self.admin_allow_remote:
            # The admin API has no authentication (as Envoy's and ztunnel's): anyone who reaches
            # it can POST /quitquitquit. ztunnel binds it to localhost only.
            raise RemoteAdminRefused(
                f"--admin-addr: got {self.admin}, expected a loopback address (127.0.0.1 or "
                "[::1]); pass --admin-allow-remote to serve the unauthenticated admin API there"
            )
        if not self.handshake_timeout > 0:
            raise UsageError(
                f"--handshake-timeout: got {self.handshake_timeout!r}, expected seconds > 0"
            )
        if not self.pod_grace >= 0:
            raise UsageError(f"--pod-grace: got {self.pod_grace!r}, expected seconds >= 0")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise BadWorkerCount(f"--workers: got {self.workers}, expected 1..{MAX_WORKERS}")
        if self.workers > 1 and self.pin_dir is None:
            # Followers open the capture's maps from its pins (Capture.follow) to answer
            # original_destination; an unpinned capture's maps are reachable only here.
            raise BadWorkerCount(
                f"--workers: got {self.workers} with --no-pin, expected 1 (follower workers "
                "open the pinned capture maps: drop --no-pin)"
            )

    def _check_ktls(self) -> None:
        if self.ktls not in KTLS_MODES:
            raise UsageError(f"--ktls: got {self.ktls!r}, expected one of {', '.join(KTLS_MODES)}")
        if self.splice and self.ktls != "on":
            raise UsageError(
                f"--splice: got on with --ktls {self.ktls}, expected --ktls on (spliced bytes "
                "bypass OpenSSL: only the kernel's TLS can seal them)"
            )

    def _check_mode(self) -> None:
        if (self.config is None) == (not self.etcd):
            got = "both" if self.config is not None else "neither"
            raise ModeConflict(f"--config/--etcd: got {got}, expected exactly one: {MODE_FLAGS}")
        if self.config is not None:
            tls = [f for f in ("cacert", "cert", "key") if getattr(self, f"etcd_{f}") is not None]
            if tls:
                raise ModeConflict(
                    f"--etcd-{tls[0]}: got it with --config, expected it only with --etcd"
                )
        elif self.init_ca:
            raise ModeConflict(
                "--init-ca: got it with --etcd, expected it only with --config (a fleet node's "
                "certificates come from `zt ca serve`; its CA key is on no node)"
            )

    @property
    def source(self) -> Source:
        """Where the mesh config and certificates come from."""
        return "file" if self.config is not None else "fleet"

    @property
    def accept_limits(self) -> AcceptLimits:
        """The caps of every pod's accept loops, with this node's handshake deadline."""
        return dataclasses.replace(DEFAULT_LIMITS, handshake_timeout=self.handshake_timeout)

    @property
    def illegal_ports(self) -> frozenset[int]:
        """zt's own ports plus where this node moved its endpoints: never a destination."""
        return loopguard_ports((self.metrics.port, self.readiness.port, self.admin.port))

    def follower_json(self) -> str:
        """What a follower worker needs (no endpoints, no pod API: those are the leader's)."""
        return json.dumps(
            {
                "config": str(self.config) if self.config is not None else None,
                "node": self.node,
                # fleet mode: the follower watches the leader's mesh cache in the state dir and
                # asks etcd for its own certificates with the same credentials
                "etcd": list(self.etcd),
                "state_dir": str(self.state_dir),
                "etcd_cacert": _opt(self.etcd_cacert),
                "etcd_cert": _opt(self.etcd_cert),
                "etcd_key": _opt(self.etcd_key),
                "ca_dir": str(self.ca_dir),
                "trust_domain": self.trust_domain,
                "capture": self.capture,
                "pin_dir": str(self.pin_dir) if self.pin_dir else None,
                "log_format": self.log_format,
                "drain_deadline": self.drain_deadline,
                "config_poll": self.config_poll,
                "socks5": self.socks5,
                "workers": self.workers,
                "handshake_timeout": self.handshake_timeout,
                "ktls": self.ktls,
                "dns": self.dns,
                "dns_upstreams": [str(u) for u in self.dns_upstreams],
                "splice": self.splice,
                "original_source": self.original_source,
                # not served by followers, but guarded by them (the loop guard's ports)
                "metrics": str(self.metrics),
                "readiness": str(self.readiness),
                "admin": str(self.admin),
                "admin_allow_remote": self.admin_allow_remote,
            }
        )

    @classmethod
    def from_follower_json(cls, text: str) -> NodeOptions:
        try:
            doc = json.loads(text)
            capture = doc["capture"]
            if capture not in get_args(Mode):
                raise ValueError(f"capture {capture!r}")
            return cls(
                node=str(doc["node"]),
                config=_path(doc["config"]),
                etcd=tuple(str(url) for url in doc["etcd"]),
                state_dir=Path(doc["state_dir"]),
                etcd_cacert=_path(doc["etcd_cacert"]),
                etcd_cert=_path(doc["etcd_cert"]),
                etcd_key=_path(doc["etcd_key"]),
                ca_dir=Path(doc["ca_dir"]),
                trust_domain=str(doc["trust_domain"]),
                capture=capture,
                pin_dir=Path(doc["pin_dir"]) if doc["pin_dir"] else None,
                log_format=str(doc["log_format"]),
                drain_deadline=float(doc["drain_deadline"]),
                config_poll=float(doc["config_poll"]),
                socks5=bool(doc["socks5"]),
                workers=int(doc["workers"]),
                handshake_timeout=float(doc["handshake_timeout"]),
                ktls=str(doc["ktls"]),
                dns=bool(doc["dns"]),
                dns_upstreams=tuple(parse_upstream(str(u)) for u in doc["dns_upstreams"]),
                splice=bool(doc["splice"]),
                original_source=bool(doc["original_source"]),
                metrics=SocketAddr.parse(str(doc["metrics"])),
                readiness=SocketAddr.parse(str(doc["readiness"])),
                admin=SocketAddr.parse(str(doc["admin"])),
                admin_allow_remote=bool(doc["admin_allow_remote"]),
            )
        except (ValueError, KeyError, TypeError, UpstreamConfigError) as exc:
            raise UsageError(
                f"--options: got {text!r}, expected the leader's JSON ({exc})"
            ) from None


def dns_upstream(text: str) -> Upstream:
    """One `--dns-upstream` value: an IP address with an optional port."""
    try:
        return parse_upstream(text)
    except UpstreamConfigError:
        raise UsageError(
            f"--dns-upstream: got {text!r}, expected an IP address with an optional port "
            "(10.96.0.10, 10.96.0.10:5353, fd00::a, [fd00::a]:53)"
        ) from None


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _path(value: object) -> Path | None:
    return None if value is None else Path(str(value))
