"""Pydantic schema of the mesh file (ztunnel-shaped, camelCase, unknown keys rejected).

Only the edge sees these classes: `zt.config.loader` turns them into `zt.state` frozen objects.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator
from pydantic.alias_generators import to_camel

from zt.addr import HOSTNAME_FORM, parse_hostname
from zt.errors import ZtError
from zt.identity import spiffe

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("a name of letters, digits, '.', '_' or '-' (no '/', not empty)")
    return value


# Telemetry names (canonical service, revision, cluster, locality) become Prometheus label values
# and unquoted access-log values: the characters of a name (no length cap, so that a workload name
# defaulted from `name` always reloads), or empty for "unset".
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")


def _label_value(value: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise ValueError(
            "empty, or letters, digits, '.', '_' or '-' starting and ending with a letter or digit"
        )
    return value


def _trust_domain(value: str) -> str:
    try:
        return spiffe.trust_domain(value)
    except ZtError:
        raise ValueError("a trust domain of lowercase letters, digits, '.', '_' or '-'") from None


def _spiffe(value: str) -> str:
    try:
        return str(spiffe.SpiffeId.parse(value))
    except ZtError as exc:  # the identity room's error names what was wrong
        raise ValueError(f"a SPIFFE id spiffe://<trust-domain>/ns/<ns>/sa/<sa> ({exc})") from None


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("a CIDR such as 10.0.0.0/8, fd00::/64, or a single IP") from None
    return value


def _vip(value: str) -> str:
    network, sep, ip = value.rpartition("/")
    if not sep:
        ip = value
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError("'<network>/<ip>' or '<ip>' with an IPv4 or IPv6 address") from None
    return f"{network}/{ip}"


def _service_key(value: str) -> str:
    ns, sep, host = value.partition("/")
    if not sep or not ns or not host or "/" in host:
        raise ValueError("'<namespace>/<hostname>'")
    return value


def _host(value: str) -> str:
    """RFC 1123 §2.1 (zt.addr.parse_hostname), lowercased (RFC 4343: names compare
    case-insensitively; the mesh's indexes compare them exactly). A trailing dot is dropped."""
    try:
        return parse_hostname(value, absolute=True)
    except ZtError:
        raise ValueError(HOSTNAME_FORM) from None


def _workload_hostname(value: str) -> str:
    return _host(value) if value else value  # "": unset


def _service_hostname(value: str) -> str:
    """A host name, or `*.` and one: a wildcard (Istio ServiceEntry hosts; ztunnel's DNS answers
    every name below it, `get_wildcards`)."""
    wildcard = value.startswith("*.")
    try:
        host = _host(value[2:] if wildcard else value)
    except ValueError:
        raise ValueError(f"{HOSTNAME_FORM}; or '*.' and one, a wildcard") from None
    return "*." + host if wildcard else host


def _endpoint_key(value: str) -> str:
    """A workload's `services` key: `<namespace>/<hostname>`, the hostname lowercased as the
    service's own (so `default/Echo...` still names service `echo...`)."""
    ns, _, host = _service_key(value).partition("/")
    return f"{ns}/{host.lower()}"


Name = Annotated[str, AfterValidator(_name)]
WorkloadHostname = Annotated[str, AfterValidator(_workload_hostname)]
ServiceHostname = Annotated[str, AfterValidator(_service_hostname)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
TrustDomain = Annotated[str, AfterValidator(_trust_domain)]
SpiffeUri = Annotated[str, AfterValidator(_spiffe)]
Cidr = Annotated[str, AfterValidator(_cidr)]


def _principal(value: str) -> str:
    try:
        return spiffe.principal_pattern(value)
    except spiffe.InvalidPrincipal as exc:  # names the expected form (and a hint, if any)
        raise ValueError(exc.expected) from None


Principal = Annotated[str, AfterValidator(_principal)]
Vip = Annotated[str, AfterValidator(_vip)]
ServiceKey = Annotated[str, AfterValidator(_service_key)]
EndpointKey = Annotated[str, AfterValidator(_endpoint_key)]
Port = Annotated[int, Field(ge=1, le=65535)]
TargetPort = Annotated[int, Field(ge=0, le=65535)]  # 0: the endpoint's own mapping decides


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=False
    )


class LocalityModel(_Model):
    region: LabelValue = ""
    zone: LabelValue = ""
    subzone: LabelValue = ""


class WorkloadModel(_Model):
    uid: Annotated[str, Field(min_length=1)]
    name: Name
    namespace: Name = "default"
    service_account: Name = "default"
    trust_domain: TrustDomain = "cluster.local"
    workload_ips: list[IPvAnyAddress] = []
    network: str = ""
    protocol: Literal["HBONE", "TCP"] = "TCP"
    node: str = ""
    netns: str | None = None
    status: Literal["Healthy", "Unhealthy"] = "Healthy"
    services: dict[EndpointKey, dict[Port, TargetPort]] = {}
    authorization_policies: list[ServiceKey] = []
    # ztunnel's telemetry fields. Empty means what istiod sends for an unlabelled pod: the
    # workload name is `name`, the canonical name the workload name, the revision "latest"
    # (zt.config.convert fills them in). clusterId and locality stay empty: "unknown" in labels.
    workload_name: LabelValue = ""
    canonical_name: LabelValue = ""
    canonical_revision: LabelValue = ""
    cluster_id: LabelValue = ""
    locality: LocalityModel = LocalityModel()
    hostname: WorkloadHostname = ""
    waypoint: GatewayAddressModel | None = None
    application_tunnel: ApplicationTunnelModel | None = None


class ServiceModel(_Model):
    name: Name
    namespace: Name = "default"
    hostname: ServiceHostname
    vips: list[Vip] = []
    ports: dict[Port, TargetPort] = {}
    subject_alt_names: list[SpiffeUri] = []
    waypoint: GatewayAddressModel | None = None
    load_balancer: LoadBalancerModel | None = None


class ServiceAccountModel(_Model):
    namespace: Name
    service_account: Name


class MatchModel(_Model):
    namespaces: list[str] = []
    not_namespaces: list[str] = []
    principals: list[Principal] = []
    not_principals: list[Principal] = []
    service_accounts: list[ServiceAccountModel] = []
    not_service_accounts: list[ServiceAccountModel] = []
    source_ips: list[Cidr] = []
    not_source_ips: list[Cidr] = []
    destination_ips: list[Cidr] = []
    not_destination_ips: list[Cidr] = []
    destination_ports: list[Port] = []
    not_destination_ports: list[Port] = []


class PolicyModel(_Model):
    name: Name
    namespace: Name = "default"
    scope: Literal["Global", "Namespace", "WorkloadSelector"]
    action: Literal["Allow", "Deny"]
    dry_run: bool = False
    rules: list[list[list[MatchModel]]] = []


class MeshFile(_Model):
    workloads: list[WorkloadModel] = []
    services: list[ServiceModel] = []
    policies: list[PolicyModel] = []


# --- Waypoints and application tunnels (ztunnel's GatewayAddress and ApplicationTunnel, whose
# YAML shape they keep). Defined after their users: `from __future__ import annotations` and
# pydantic's deferred resolution (MeshFile.model_rebuild below) allow it.

_DESTINATION_FORMS = (
    "{address: <ip>, network: <network>} (a waypoint workload's address or its service's VIP)"
    " or {namespace: <ns>, hostname: <service hostname>}"
)


class GatewayDestinationModel(_Model):
    """ztunnel's untagged `NetworkAddress | NamespacedHostname`: the keys present decide the form
    (one flat model, so a bad key gets a plain field path instead of one per union branch)."""

    network: str | None = None
    address: IPvAnyAddress | None = None
    namespace: Name | None = None
    hostname: Annotated[str, AfterValidator(_host)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> GatewayDestinationModel:
        by_address = self.address is not None or self.network is not None
        by_name = self.namespace is not None or self.hostname is not None
        if by_address == by_name:  # both forms mixed, or neither
            raise ValueError(_DESTINATION_FORMS)
        if by_address and self.address is None:
            raise ValueError(f"an address beside the network; {_DESTINATION_FORMS}")
        if by_name and (self.namespace is None or self.hostname is None):
            raise ValueError(f"both namespace and hostname; {_DESTINATION_FORMS}")
        return self


class GatewayAddressModel(_Model):
    destination: GatewayDestinationModel
    hbone_mtls_port: Port = 15008


class ApplicationTunnelModel(_Model):
    protocol: Literal["NONE", "PROXY"]
    port: Port | None = None  # None: the target port (ztunnel's `port.unwrap_or(dest.port())`)


# -- load balancing: ztunnel's Service.load_balancer (Istio's workload API LoadBalancing) ------


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("each scope at most once")
    return values


class LoadBalancerModel(_Model):
    """`loadBalancer: {routingPreferences: [...], mode: ..., healthPolicy: ...}`; meanings:
    zt/state/endpoints.py."""

    routing_preferences: Annotated[
        list[Literal["NETWORK", "REGION", "ZONE", "SUBZONE", "NODE", "CLUSTER"]],
        AfterValidator(_distinct),
    ] = []
    mode: Literal["UNSPECIFIED_MODE", "FAILOVER", "STRICT"] = "UNSPECIFIED_MODE"
    health_policy: Literal["ONLY_HEALTHY", "ALLOW_ALL"] = "ONLY_HEALTHY"


# The models above name the waypoint and load-balancer models before they are defined (these
# blocks are appended so that edits elsewhere in the file merge cleanly): resolve them now,
# aliases included.
WorkloadModel.model_rebuild(force=True)
ServiceModel.model_rebuild(force=True)
MeshFile.model_rebuild(force=True)
