"""The lab waypoint's Envoy bootstrap (pure): configured the way Istio configures a waypoint proxy.

Istio's waypoint (pilot's waypoint listeners and clusters) has this shape, kept here:

    connect_terminate  :15008, mTLS under the waypoint's own SPIFFE certificate (signed by the
                       mesh CA), HTTP/2 with `allow_connect`; a CONNECT's tunnelled bytes go to
                       the internal listener main_internal, the `:authority` (the address the app
                       dialled, e.g. the service VIP:port) handed over as the internal
                       connection's original destination (filter state
                       `envoy.filters.listener.original_dst.local_ip`)
    main_internal      internal listener; `original_dst` restores that destination, one filter
                       chain per service address (VIP:port) runs an HTTP connection manager with
                       the L7 policy (`envoy.filters.http.rbac`: deny path prefix /admin) and a
                       router to the service's cluster, whose endpoints are internal addresses
                       of connect_originate, each carrying its pod's ip:port as metadata
    connect_originate  internal listener; `original_dst` restores the pod's ip:port from that
                       metadata, `tcp_proxy` with `tunneling_config` sends CONNECT <pod ip>:<port>
                       over mTLS (the waypoint's certificate again) to the pod's :15008
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zt.lab.envoy import TlsFiles, common_tls_context

ADMIN_PORT = 15000  # Istio's proxies keep admin on 127.0.0.1:15000
HBONE_PORT = 15008
MAIN_INTERNAL = "main_internal"
CONNECT_ORIGINATE = "connect_originate"
# Envoy's original_dst listener filter reads an internal connection's destination from here
ORIGINAL_DST = "envoy.filters.listener.original_dst"
ORIGINAL_DST_LOCAL = "envoy.filters.listener.original_dst.local_ip"
DENIED_PREFIX = "/admin"
RBAC_BODY = "RBAC: access denied"  # Envoy's rbac filter answers a denial with 403 and this body
_T = "type.googleapis.com/envoy.extensions."


@dataclass(frozen=True)
class Backend:
    """A service behind the waypoint: its addresses (`ip:port` as the :authority names them;
    IPv6 as `[ip]:port`) and its endpoints (`ip:target port`, the pods' own addresses)."""

    hostname: str
    addresses: tuple[str, ...]
    endpoints: tuple[str, ...]

    @property
    def cluster(self) -> str:
        port = self.addresses[0].rpartition(":")[2]
        return f"inbound-vip|{port}|http|{self.hostname}"  # Istio's waypoint cluster name


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _socket(address: str) -> dict[str, Any]:
    host, port = _split(address)
    return {"socket_address": {"address": host, "port_value": port}}


def _internal(listener: str, endpoint_id: str = "") -> dict[str, Any]:
    addr = {"server_listener_name": listener}
    if endpoint_id:
        addr["endpoint_id"] = endpoint_id
    return {"envoy_internal_address": addr}


def _tls_context(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    """HBONE's TLS: 1.3 only, ALPN h2, the waypoint's certificate, peers of the trust domain."""
    return common_tls_context(
        tls.cert, tls.key, tls.roots, [{"prefix": f"spiffe://{trust_domain}/"}]
    )


def _filter(name: str, type_url: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": _T + type_url, **config}}


def _router() -> dict[str, Any]:
    return _filter("envoy.filters.http.router", "filters.http.router.v3.Router")


def _original_dst_filter() -> dict[str, Any]:
    return _filter(ORIGINAL_DST, "filters.listener.original_dst.v3.OriginalDst")


def _internal_upstream(passthrough: list[dict[str, Any]]) -> dict[str, Any]:
    """Hands the internal connection what the listener behind it needs (filter state shared by
    the downstream, or host metadata)."""
    return {
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": _T + "transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            "passthrough_metadata": passthrough,
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {
                    "@type": _T + "transport_sockets.raw_buffer.v3.RawBuffer",
                },
            },
        },
    }


def _connect_terminate(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    route = {
        "match": {"connect_matcher": {}},
        "route": {
            "cluster": MAIN_INTERNAL,
            "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        },
    }
    # the :authority (HBONE: "the destination the app dialled") becomes the original destination
    # of the internal connection to main_internal
    set_state = _filter(
        "envoy.filters.http.set_filter_state",
        "filters.http.set_filter_state.v3.Config",
        on_request_headers=[
            {
                "object_key": ORIGINAL_DST_LOCAL,
                "format_string": {"text_format_source": {"inline_string": "%REQ(:AUTHORITY)%"}},
                "shared_with_upstream": "ONCE",
            }
        ],
    )
    hcm = _filter(
        "envoy.filters.network.http_connection_manager",
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="connect_terminate",
        codec_type="HTTP2",
        http2_protocol_options={"allow_connect": True},
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        route_config={
            "name": "default",
            "virtual_hosts": [{"name": "default", "domains": ["*"], "routes": [route]}],
        },
        http_filters=[set_state, _router()],
    )
    downstream_tls = {
        "@type": _T + "transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _tls_context(tls, trust_domain),
    }
    return {
        "name": "connect_terminate",
        "address": _socket(f"[::]:{HBONE_PORT}"),
        "additional_addresses": [{"address": _socket(f"0.0.0.0:{HBONE_PORT}")}],
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": downstream_tls,
                },
                "filters": [hcm],
            }
        ],
    }


def _rbac() -> dict[str, Any]:
    """L7 authorization (Istio's AuthorizationPolicy on a waypoint): deny /admin*, allow the rest."""
    return _filter(
        "envoy.filters.http.rbac",
        "filters.http.rbac.v3.RBAC",
        rules={
            "action": "DENY",
            "policies": {
                "ns[lab]-policy[deny-admin]-rule[0]": {
                    "permissions": [{"url_path": {"path": {"prefix": DENIED_PREFIX}}}],
                    "principals": [{"any": True}],
                }
            },
        },
    )


def _service_chain(backend: Backend) -> dict[str, Any]:
    hcm = _filter(
        "envoy.filters.network.http_connection_manager",
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=backend.cluster,
        codec_type="AUTO",
        route_config={
            "name": backend.cluster,
            "virtual_hosts": [
                {
                    "name": backend.hostname,
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": backend.cluster}}],
                }
            ],
        },
        http_filters=[_rbac(), _router()],
    )
    ranges = [{"address_prefix": _split(a)[0], "prefix_len": 128 if ":" in _split(a)[0] else 32}
              for a in backend.addresses]  # fmt: skip
    ports = {_split(a)[1] for a in backend.addresses}
    match: dict[str, Any] = {"prefix_ranges": ranges}
    if len(ports) == 1:
        match["destination_port"] = ports.pop()
    return {"name": backend.hostname, "filter_chain_match": match, "filters": [hcm]}


def _main_internal(backends: tuple[Backend, ...]) -> dict[str, Any]:
    return {
        "name": MAIN_INTERNAL,
        "internal_listener": {},
        "use_original_dst": False,
        "listener_filters": [_original_dst_filter()],
        "filter_chains": [_service_chain(b) for b in backends],
    }


def _connect_originate() -> dict[str, Any]:
    tcp_proxy = _filter(
        "envoy.filters.network.tcp_proxy",
        "filters.network.tcp_proxy.v3.TcpProxy",
        stat_prefix=CONNECT_ORIGINATE,
        cluster=CONNECT_ORIGINATE,
        # HBONE: the CONNECT's :authority is the pod's ip:port (what original_dst restored)
        tunneling_config={"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"},
    )
    return {
        "name": CONNECT_ORIGINATE,
        "internal_listener": {},
        "use_original_dst": False,
        "listener_filters": [_original_dst_filter()],
        "filter_chains": [{"filters": [tcp_proxy]}],
    }


def _endpoint(address: str) -> dict[str, Any]:
    return {
        "endpoint": {"address": _internal(CONNECT_ORIGINATE, address)},
        "metadata": {"filter_metadata": {ORIGINAL_DST: {"local": address}}},
    }


def _service_cluster(backend: Backend) -> dict[str, Any]:
    return {
        "name": backend.cluster,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": backend.cluster,
            "endpoints": [{"lb_endpoints": [_endpoint(e) for e in backend.endpoints]}],
        },
        # each endpoint's ip:port travels to connect_originate as its original destination
        "transport_socket": _internal_upstream([{"kind": {"host": {}}, "name": ORIGINAL_DST}]),
    }


def _main_internal_cluster() -> dict[str, Any]:
    return {
        "name": MAIN_INTERNAL,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": MAIN_INTERNAL,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _internal(MAIN_INTERNAL)}}]}],
        },
        "transport_socket": _internal_upstream([]),
    }


def _connect_originate_cluster(tls: TlsFiles, trust_domain: str) -> dict[str, Any]:
    upstream_tls = {
        "@type": _T + "transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": _tls_context(tls, trust_domain),
    }
    return {
        "name": CONNECT_ORIGINATE,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "original_dst_lb_config": {"upstream_port_override": HBONE_PORT},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": upstream_tls},
    }


def config(tls: TlsFiles, trust_domain: str, backends: tuple[Backend, ...]) -> dict[str, Any]:
    """The waypoint's whole bootstrap (static: the lab's mesh does not change under it)."""
    return {
        "admin": {"address": _socket(f"127.0.0.1:{ADMIN_PORT}")},
        "bootstrap_extensions": [
            _filter(
                "envoy.bootstrap.internal_listener",
                "bootstrap.internal_listener.v3.InternalListener",
            )
        ],
        "static_resources": {
            "listeners": [
                _connect_terminate(tls, trust_domain),
                _main_internal(backends),
                _connect_originate(),
            ],
            "clusters": [
                _main_internal_cluster(),
                *(_service_cluster(b) for b in backends),
                _connect_originate_cluster(tls, trust_domain),
            ],
        },
    }
