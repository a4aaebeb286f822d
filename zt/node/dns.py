"""Each served pod's DNS proxy (docs/dns.md "In the node"): a `DnsServer` on the marked sockets
`open_dns_sockets` makes on 127.0.0.1:15053 and [::1]:15053 inside the pod, where capture steers
the pod's port-53 traffic (docs/design.md §6, DNS). Names come from the newest snapshot; what the
mesh does not hold goes to the node's upstreams (`--dns-upstream`, else /etc/resolv.conf, read
once at start as ztunnel does), asked from zt's own namespace.

Only the leader serves DNS when the node runs worker processes: the sockets are per pod and UDP
has no accept to spread, so one server per pod suffices, and one cache per pod keeps a name from
being asked upstream once per worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zt.capture.netns import open_dns_sockets
from zt.dns.errors import DnsBindError
from zt.dns.metrics import DnsMetrics
from zt.dns.server import DNS_PROXY_PORT, DnsServer
from zt.dns.upstream import RESOLV_CONF, Upstream, system_upstreams
from zt.state.snapshot import Snapshot
from zt.telemetry.metrics import Registry


@dataclass(frozen=True)
class NodeDns:
    upstreams: tuple[Upstream, ...]
    source: str  # "--dns-upstream" or the resolv.conf they were read from
    metrics: DnsMetrics

    @classmethod
    def open(
        cls, upstreams: tuple[Upstream, ...], registry: Registry, resolv: Path = RESOLV_CONF
    ) -> NodeDns:
        if upstreams:
            return cls(upstreams, "--dns-upstream", DnsMetrics(registry))
        return cls(system_upstreams(resolv), str(resolv), DnsMetrics(registry))

    async def serve(self, netns: Path, uid: str, names: Callable[[], Snapshot]) -> DnsServer:
        """Start the DNS proxy of pod `uid` (its netns at `netns`); the caller closes it."""
        try:
            sockets = await asyncio.to_thread(open_dns_sockets, netns)
        except OSError as exc:  # e.g. an app of the pod bound 15053 before it was enrolled
            raise DnsBindError(
                f"dns proxy of pod {uid}: cannot bind {DNS_PROXY_PORT} on 127.0.0.1/[::1] in "
                f"{netns} ({exc.strerror or exc}), expected the port free in the pod"
            ) from None
        server = DnsServer(names, self.upstreams, metrics=self.metrics, client_uid=uid)
        await server.start(sockets)
        return server

    def dump(self) -> dict[str, object]:
        """/config_dump's `dns`."""
        return {"enabled": True, "upstreams": [str(u) for u in self.upstreams],
                "upstreams_from": self.source}  # fmt: skip
