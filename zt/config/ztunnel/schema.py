"""Pydantic edge model of ztunnel's own local config (the YAML `LOCAL_XDS_PATH` names).

Field names, required fields and defaults are those of ztunnel's serde structs: `LocalConfig` and
`LocalWorkload` (src/xds.rs), `Workload`, `GatewayAddress`, `ApplicationTunnel` (src/state/
workload.rs), `Service`, `LoadBalancer` (src/state/service.rs), `Authorization`, `RbacMatch`,
`StringMatch` (src/rbac.rs). Unknown keys are refused everywhere, as `deny_unknown_fields` does;
ztunnel's `RbacMatch`, `ServiceAccountMatch` and `Locality` would ignore one, but a misspelt key in
an ALLOW policy silently widens it, so zt refuses it there too.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    model_validator,
)
from pydantic.alias_generators import to_camel

U16 = Annotated[int, Field(ge=0, le=65535)]
U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
NETWORK_ADDRESS_FORM = "'<network>/<ip>' (the network may be empty: '/10.0.0.1')"
NAMESPACED_HOSTNAME_FORM = "'<namespace>/<hostname>'"


def split_network_address(value: str) -> tuple[str, str] | None:
    """ztunnel's NetworkAddress text: split at the first '/', then an IP (`str::split_once`)."""
    network, sep, ip = value.partition("/")
    if not sep:
        return None
    try:
        return network, str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def _network_address(value: str) -> str:
    parts = split_network_address(value)
    if parts is None:
        raise ValueError(NETWORK_ADDRESS_FORM)
    return "/".join(parts)


def _gateway_destination(value: str) -> str:
    """serde `untagged`: a NetworkAddress if it is one, else a NamespacedHostname."""
    parts = split_network_address(value)
    if parts is not None:
        return "/".join(parts)
    if "/" not in value:
        raise ValueError(f"{NETWORK_ADDRESS_FORM} or {NAMESPACED_HOSTNAME_FORM}")
    return value


def _cidr(value: str) -> str:
    """ipnet's IpNet text: an address and a prefix length (a bare IP is not one)."""
    try:
        if "/" not in value:
            raise ValueError
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            "a CIDR with its prefix length, such as 10.0.0.0/8 or 10.1.0.9/32"
        ) from None
    return value


NetworkAddress = Annotated[str, AfterValidator(_network_address)]
GatewayDestination = Annotated[str, AfterValidator(_gateway_destination)]
IpNet = Annotated[str, AfterValidator(_cidr)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False
    )


class GatewayAddress(_Model):
    destination: GatewayDestination
    hbone_mtls_port: U16


class ApplicationTunnel(_Model):
    protocol: Literal["NONE", "PROXY"]
    port: U16 | None = None


class Locality(_Model):
    region: str
    zone: str
    subzone: str


class Workload(_Model):
    """`LocalWorkload`: ztunnel's `Workload` flattened, with `services` as a port map."""

    workload_ips: list[IPvAnyAddress]
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    protocol: Literal["TCP", "HBONE"] = "TCP"
    network_mode: Literal["Standard", "HostNetwork"] = "Standard"
    uid: str = ""
    name: str = ""
    namespace: str
    trust_domain: str = ""
    service_account: str = ""
    network: str = ""
    workload_name: str = ""
    workload_type: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    hostname: str = ""
    node: str = ""
    native_tunnel: bool = False
    application_tunnel: ApplicationTunnel | None = None
    authorization_policies: list[str] = []
    status: Literal["Healthy", "Unhealthy"] = "Healthy"
    cluster_id: str = ""
    locality: Locality | None = None
    capacity: U32 = 1
    services: dict[str, dict[U16, U16]]


class LoadBalancer(_Model):
    routing_preferences: list[Literal["Region", "Zone", "Subzone", "Node", "Cluster", "Network"]]
    mode: Literal["Standard", "Strict", "Failover", "Passthrough"]
    health_policy: Literal["OnlyHealthy", "AllowAll"]


class Service(_Model):
    name: str
    namespace: str
    hostname: str
    vips: list[NetworkAddress]
    cidr_vips: list[str] = []
    ports: dict[U16, U16]
    endpoints: dict[str, object] = {}
    subject_alt_names: list[str] = []
    waypoint: GatewayAddress | None = None
    weighted_waypoints: list[object] = []
    load_balancer: LoadBalancer | None = None
    ip_families: Literal["Dual", "IPv4", "IPv6"] | None = None
    canonical: bool = False
    visibility: Literal["Public", "Namespace"] = "Public"


STRING_MATCH_KINDS = ("Exact", "Prefix", "Suffix", "Presence")


class StringMatch(BaseModel):
    """ztunnel's `StringMatch` enum, externally tagged: `!Exact v` / `{Exact: v}`, `Prefix`,
    `Suffix`, and `!Presence []` (a variant without a value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    exact: str | None = Field(None, alias="Exact")
    prefix: str | None = Field(None, alias="Prefix")
    suffix: str | None = Field(None, alias="Suffix")
    presence: list[object] | None = Field(None, alias="Presence")

    @model_validator(mode="before")
    @classmethod
    def _one_variant(cls, data: object) -> object:
        if (
            not isinstance(data, dict)
            or len(data) != 1
            or next(iter(data)) not in STRING_MATCH_KINDS
        ):
            raise ValueError(
                "one of !Exact v, !Prefix v, !Suffix v, !Presence [] (or {Exact: v} ...)"
            )
        if data.get("Presence", []) != []:
            raise ValueError("!Presence [] (Presence takes no value)")
        return data

    @property
    def kind(self) -> str:
        return next(k for k in STRING_MATCH_KINDS if getattr(self, k.lower()) is not None)

    @property
    def value(self) -> str:
        return "" if self.kind == "Presence" else str(getattr(self, self.kind.lower()))


class ServiceAccountMatch(_Model):
    namespace: str
    service_account: str


class Match(_Model):
    namespaces: list[StringMatch] = []
    not_namespaces: list[StringMatch] = []
    service_accounts: list[ServiceAccountMatch] = []
    not_service_accounts: list[ServiceAccountMatch] = []
    principals: list[StringMatch] = []
    not_principals: list[StringMatch] = []
    source_ips: list[IpNet] = []
    not_source_ips: list[IpNet] = []
    destination_ips: list[IpNet] = []
    not_destination_ips: list[IpNet] = []
    destination_ports: list[U16] = []
    not_destination_ports: list[U16] = []


class Authorization(_Model):
    name: str
    namespace: str
    scope: Literal["Global", "Namespace", "WorkloadSelector"]
    action: Literal["Allow", "Deny"]
    rules: list[list[list[Match]]]
    dry_run: bool


class LocalConfig(_Model):
    workloads: list[Workload] = []
    policies: list[Authorization] = []
    services: list[Service] = []
