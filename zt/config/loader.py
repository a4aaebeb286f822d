"""Load a mesh file (YAML or JSON) into an immutable `Snapshot`, or say exactly what is wrong.

Pydantic checks shapes and values; `_cross_check` then finds what only the whole document shows
(duplicate uids, one IP claimed twice on a network, a service port mapping to nothing, references to
services or policies that do not exist). Every problem is reported, each with its field path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zt.config import convert
from zt.config.crosscheck import cross_check
from zt.config.paths import render
from zt.config.schema import MeshFile
from zt.errors import ConfigError, FieldProblem
from zt.state.snapshot import Snapshot


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(
                loader.name,
                [FieldProblem(f"line {mark.line + 1}", key, "each key once per mapping")],
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _expected(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "no such field (unknown key)"
    if error["type"] == "missing":
        return "a value (required field)"
    for prefix in ("Value error, ", "Input should be "):
        if msg.startswith(prefix):
            return msg.removeprefix(prefix)
    return msg


def _problems(error: ValidationError) -> list[FieldProblem]:
    return [FieldProblem(render(e["loc"]), e.get("input"), _expected(e)) for e in error.errors()]


def parse_text(text: str, source: str) -> object:
    """YAML (a superset of JSON) text to plain data; syntax errors become ConfigError."""
    if source.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise ConfigError(source, [FieldProblem(where, exc.msg, "valid JSON")]) from None
    try:
        loader = _UniqueKeyLoader(text)  # the reader already rejects unprintable characters
        loader.name = source
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(document)"
        raise ConfigError(source, [FieldProblem(where, str(exc), "valid YAML")]) from None


def load_document(document: object, source: str) -> Snapshot:
    """Validate plain data (as parsed from YAML/JSON) and build the snapshot."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        expected = "a mapping with workloads, services, policies"
        raise ConfigError(source, [FieldProblem("(document)", document, expected)])
    try:
        mesh = MeshFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None
    problems = cross_check(mesh)
    if problems:
        raise ConfigError(source, problems)
    return convert.snapshot(mesh)


def load_text(text: str, source: str = "<text>") -> Snapshot:
    return load_document(parse_text(text, source), source)


def load_file(path: Path | str) -> Snapshot:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), [FieldProblem("(file)", str(path), f"a readable file ({exc})")]
        ) from None
    return load_text(text, str(path))
