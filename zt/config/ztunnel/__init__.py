"""ztunnel's own local config format: read it (`zt config check|import`), write it (`zt config
export --format ztunnel`). docs/config-reference.md, "Importing ztunnel's local config".

zt's mesh file is shaped like ztunnel's local config but is not it: ztunnel writes VIPs and
waypoints as `"<network>/<ip>"` text, string matches as serde enums (`!Exact default`), requires
some fields zt defaults and has fields zt has no use for. `schema` is the edge model of ztunnel's
format, `to_zt` and `from_zt` the pure conversions; this module ties them to zt's loader.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from zt.config.loader import load_document, parse_text, validation_problems
from zt.config.schema import MeshFile
from zt.config.ztunnel import schema
from zt.config.ztunnel.from_zt import dump_yaml, to_ztunnel
from zt.config.ztunnel.to_zt import Imported, Note, to_mesh
from zt.errors import ConfigError, FieldProblem
from zt.state.snapshot import Snapshot

Format = Literal["zt", "ztunnel"]
FORMATS: tuple[str, ...] = ("auto", "zt", "ztunnel")
__all__ = ["FORMATS", "Format", "Imported", "Note", "detect", "dump_yaml", "export_document",
           "import_document", "normal_form", "parse"]  # fmt: skip

_ZTUNNEL_WORKLOAD_KEYS = (
    "networkGateway",
    "networkMode",
    "workloadType",
    "nativeTunnel",
    "capacity",
)
_ZTUNNEL_SERVICE_KEYS = ("canonical", "visibility", "endpoints", "cidrVips",
                         "weightedWaypoints", "ipFamilies")  # fmt: skip
_STRING_FIELDS = ("namespaces", "notNamespaces", "principals", "notPrincipals")


def parse(text: str, source: str) -> object:
    """Either format's text to plain data (ztunnel's `!Tag value` enums as one-key mappings)."""
    return parse_text(text, source, enum_tags=True)


def _items(document: object, key: str) -> list[tuple[int, dict[object, object]]]:
    value = document.get(key) if isinstance(document, dict) else None
    items = value if isinstance(value, list) else []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _string_match_evidence(document: object) -> str | None:
    for i, p in _items(document, "policies"):
        rules = p.get("rules")
        for r, rule in enumerate(rules if isinstance(rules, list) else []):
            for c, clause in enumerate(rule if isinstance(rule, list) else []):
                for k, m in enumerate(clause if isinstance(clause, list) else []):
                    for key in _STRING_FIELDS:
                        values = m.get(key) if isinstance(m, dict) else None
                        if isinstance(values, list) and any(isinstance(v, dict) for v in values):
                            return f"policies[{i}].rules[{r}][{c}][{k}].{key}"
    return None


def _gateway_text(item: dict[object, object]) -> bool:
    for key in ("waypoint", "networkGateway"):
        value = item.get(key)
        if isinstance(value, dict) and isinstance(value.get("destination"), str):
            return True
    return False


def detect(document: object) -> tuple[Format, str | None]:
    """Which format a parsed document is in, and the field that told (None: nothing told, so zt's
    own). Only ztunnel's marks count: a key zt lacks, a waypoint as text, a string match as an
    enum; a document with none of them reads the same either way."""
    for i, w in _items(document, "workloads"):
        for key in _ZTUNNEL_WORKLOAD_KEYS:
            if key in w:
                return "ztunnel", f"workloads[{i}].{key}"
        if _gateway_text(w):
            return "ztunnel", f"workloads[{i}].waypoint"
    for i, s in _items(document, "services"):
        for key in _ZTUNNEL_SERVICE_KEYS:
            if key in s:
                return "ztunnel", f"services[{i}].{key}"
        if _gateway_text(s):
            return "ztunnel", f"services[{i}].waypoint"
    evidence = _string_match_evidence(document)
    return ("ztunnel", evidence) if evidence else ("zt", None)


def _local_config(document: object, source: str) -> schema.LocalConfig:
    if document is None or not isinstance(document, dict):
        expected = "a mapping with workloads, services, policies (ztunnel's LocalConfig)"
        raise ConfigError(source, [FieldProblem("(document)", document, expected)])
    try:
        return schema.LocalConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None


def import_document(document: object, source: str) -> tuple[Imported, Snapshot]:
    """ztunnel's local config -> zt's mesh document and its snapshot, or ConfigError naming every
    field zt refuses (ztunnel's form first, then what zt's own checks find, at the same paths)."""
    imported = to_mesh(_local_config(document, source))
    if imported.problems:
        raise ConfigError(source, list(imported.problems))
    return imported, load_document(imported.mesh, source)


def export_document(document: object, source: str) -> Imported:
    """A zt mesh document -> ztunnel's local config; ConfigError as `zt config check` reports it,
    or for a zt field ztunnel has no place for."""
    load_document(document, source)  # every check zt makes, including across the file
    mesh = MeshFile.model_validate(document)
    exported = to_ztunnel(mesh)
    if exported.problems:
        raise ConfigError(source, list(exported.problems))
    return exported


def normal_form(document: object, source: str) -> dict[str, object]:
    """ztunnel's local config as ztunnel means it, for comparing two of them: defaults filled in,
    "" trust domain and service account as istiod fills them, `canonical` where it decides
    nothing (no other service has the hostname) dropped."""
    config = _local_config(document, source)
    data = config.model_dump(mode="json", by_alias=True)
    for w in data["workloads"]:
        w["trustDomain"] = w["trustDomain"] or "cluster.local"
        w["serviceAccount"] = w["serviceAccount"] or "default"
        w["locality"] = w["locality"] or {"region": "", "zone": "", "subzone": ""}
    hosts = [s.hostname for s in config.services]
    for s in data["services"]:
        if hosts.count(s["hostname"]) == 1:
            s["canonical"] = False
    return data
