"""The DNS proxy a pod's port-53 traffic is steered to (docs/dns.md).

`names` indexes a snapshot's hostnames, `wire` parses queries and renders answers, `cache` keeps
upstream answers for their TTL, `core` decides (answer, forward, drop) without I/O; `upstream`
and `server` are the asyncio adapters, `metrics` their telemetry.
"""
