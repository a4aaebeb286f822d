"""The DNS proxy's metrics and access log (docs/dns.md, docs/metrics.md).

ztunnel's families are `istio_dns_requests_total`, `istio_dns_upstream_requests_total`,
`istio_dns_upstream_failures_total` and `istio_dns_upstream_request_duration_seconds` (marked
unstable there); zt keeps its own `zt_dns_*` names, with the result as a label so one family says
what became of every query. One `DnsMetrics` may serve every pod's server (families are declared
once per registry).
"""

from __future__ import annotations

import logging

from zt.telemetry.metrics import Registry

log = logging.getLogger("zt.dns")

# ztunnel's upstream buckets (0.5 ms to 5 s) with the sub-millisecond steps local answers take
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 5.0)


class DnsMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.requests = registry.counter(
            "zt_dns_requests_total",
            "DNS queries received, by query type and what became of them",
            ("type", "result"),
        )
        self.duration = registry.histogram(
            "zt_dns_request_duration_seconds",
            "Seconds from a query's arrival to its answer, by result",
            ("result",),
            BUCKETS,
        )
        self.upstream = registry.counter(
            "zt_dns_upstream_requests_total",
            "Queries sent to upstream resolvers, by transport",
            ("transport",),
        )
        self.upstream_failures = registry.counter(
            "zt_dns_upstream_failures_total",
            "Upstream exchanges that gave no usable answer, by reason",
            ("reason",),
        )
        self.rate_limited = registry.counter(
            "zt_dns_rate_limited_total",
            "Queries over their pod's rate limit, by transport: UDP ones dropped, TCP ones delayed",
            ("transport",),
        )
        self.cache_hits = registry.counter(
            "zt_dns_cache_hits_total", "Forwardable queries answered from the cache"
        )
        self.cache_misses = registry.counter(
            "zt_dns_cache_misses_total", "Forwardable queries the cache could not answer"
        )

    def answered(
        self,
        *,
        qtype: str,
        result: str,
        seconds: float,
        qname: object,  # written with str() only if the line is logged
        client: str,
        records: int,
    ) -> None:
        self.requests.inc(labels={"type": qtype, "result": result})
        self.duration.observe(seconds, labels={"result": result})
        if result == "cached":
            self.cache_hits.inc()
        elif result in ("forwarded", "servfail"):
            self.cache_misses.inc()
        # ztunnel's DNS access log fields: source, query type, domain, result, answer count
        log.debug(
            "dns src=%s type=%s name=%s result=%s records=%d duration_us=%d",
            client,
            qtype,
            qname,
            result,
            records,
            int(seconds * 1e6),
        )

    def dropped(self, reason: str, client: str) -> None:
        self.requests.inc(labels={"type": "none", "result": "dropped"})
        log.debug("dns src=%s dropped reason=%s", client, reason)

    def over_budget(self, transport: str) -> None:
        """One query over its pod's budget (the server logs a summary line now and then)."""
        self.rate_limited.inc(labels={"transport": transport})
        if transport == "udp":  # dropped unread; a delayed TCP query is counted when answered
            self.requests.inc(labels={"type": "none", "result": "rate_limited"})

    def sent_upstream(self, transport: str) -> None:
        self.upstream.inc(labels={"transport": transport})

    def upstream_failed(self, reason: str) -> None:
        self.upstream_failures.inc(labels={"reason": reason})
