"""`zt run`'s options, shared by the leader (zt/node/daemon.py) and its follower worker processes
(zt/node/worker.py), which receive them as JSON on their command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from zt.addr import SocketAddr
from zt.capture import Mode
from zt.errors import UsageError

MAX_WORKERS = 64


class BadWorkerCount(UsageError):
    reason = "bad_worker_count"


@dataclass(frozen=True)
class NodeOptions:
    config: Path
    node: str
    ca_dir: Path = Path("/var/lib/zt/ca")
    trust_domain: str = "cluster.local"
    capture: Mode = "connect"
    pin_dir: Path | None = Path("/sys/fs/bpf/zt")
    pod_socket: Path = Path("/run/zt/pods.sock")
    metrics: SocketAddr = field(default_factory=lambda: SocketAddr.parse("[::]:15020"))
    readiness: SocketAddr = field(default_factory=lambda: SocketAddr.parse("[::]:15021"))
    admin: SocketAddr = field(default_factory=lambda: SocketAddr.parse("127.0.0.1:15000"))
    log_format: str = "text"
    drain_deadline: float = 10.0
    config_poll: float = 1.0
    socks5: bool = False
    workers: int = 1  # data-plane processes: this one (the leader) plus workers - 1 followers

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise BadWorkerCount(f"--workers: got {self.workers}, expected 1..{MAX_WORKERS}")
        if self.workers > 1 and self.pin_dir is None:
            # Followers open the capture's maps from its pins (Capture.follow) to answer
            # original_destination; an unpinned capture's maps are reachable only here.
            raise BadWorkerCount(
                f"--workers: got {self.workers} with --no-pin, expected 1 (follower workers "
                "open the pinned capture maps: drop --no-pin)"
            )

    def follower_json(self) -> str:
        """What a follower worker needs (no endpoints, no pod API: those are the leader's)."""
        return json.dumps(
            {
                "config": str(self.config),
                "node": self.node,
                "ca_dir": str(self.ca_dir),
                "trust_domain": self.trust_domain,
                "capture": self.capture,
                "pin_dir": str(self.pin_dir) if self.pin_dir else None,
                "log_format": self.log_format,
                "drain_deadline": self.drain_deadline,
                "config_poll": self.config_poll,
                "socks5": self.socks5,
                "workers": self.workers,
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
                config=Path(doc["config"]),
                node=str(doc["node"]),
                ca_dir=Path(doc["ca_dir"]),
                trust_domain=str(doc["trust_domain"]),
                capture=capture,
                pin_dir=Path(doc["pin_dir"]) if doc["pin_dir"] else None,
                log_format=str(doc["log_format"]),
                drain_deadline=float(doc["drain_deadline"]),
                config_poll=float(doc["config_poll"]),
                socks5=bool(doc["socks5"]),
                workers=int(doc["workers"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"--options: got {text!r}, expected the leader's JSON ({exc})"
            ) from None
