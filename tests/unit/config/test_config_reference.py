"""docs/config-reference.md keeps up with zt/config/schema.py: every model of the mesh file has a
section, every field (its YAML name) a row there with its true default and a line in the section's
example, no row names a field that does not exist, and the complete example loads."""

from __future__ import annotations

import json
import re
import types
import typing
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel

from zt.config import load_text
from zt.config.schema import MeshFile

DOC = Path(__file__).resolve().parents[3] / "docs" / "config-reference.md"
TOP = "top level"
_ROW = re.compile(r"^\| `([A-Za-z]+)` \|")
_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _nested_models(annotation: object) -> Iterator[tuple[str, type[BaseModel]]]:
    """The models inside a field's type, each with the path suffix it adds (`[]` per list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        yield from ((f"[]{rest}", m) for rest, m in _nested_models(args[0]))
    elif origin in (dict, typing.Union, types.UnionType, typing.Annotated):
        for arg in args if origin is not typing.Annotated else args[:1]:
            yield from _nested_models(arg)


def models() -> dict[str, type[BaseModel]]:
    """YAML path -> model, for every model reachable from MeshFile (first path found)."""
    found: dict[str, type[BaseModel]] = {}
    queue: deque[tuple[str, type[BaseModel]]] = deque([(TOP, MeshFile)])
    while queue:
        path, model = queue.popleft()
        if model in found.values():
            continue
        found[path] = model
        for field in model.model_fields.values():
            for suffix, nested in _nested_models(field.annotation):
                prefix = "" if path == TOP else f"{path}."
                queue.append((f"{prefix}{field.alias}{suffix}", nested))
    return found


def sections() -> dict[str, str]:
    """Heading -> the text up to the next heading. A heading is keyed by its first `code` (a YAML
    path), else by its lowercased title ("top level", "complete example")."""
    out: dict[str, str] = {}
    current = ""
    in_fence = False
    for line in DOC.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip()
            code = re.search(r"`([^`]+)`", title)
            current = code.group(1) if code else title.lower()
            out[current] = ""
        elif current:
            out[current] += line
    return out


def rows(section: str) -> dict[str, list[str]]:
    """Field name -> the row's cells (field, type, default, ztunnel, meaning)."""
    out: dict[str, list[str]] = {}
    for line in section.splitlines():
        if _ROW.match(line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 5, f"a row has 5 cells, no '|' inside them: {line}"
            out[cells[0].strip("`")] = cells
    return out


def _keys(value: object) -> Iterator[str]:
    """Every mapping key in parsed YAML, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def test_every_schema_field_is_documented() -> None:
    documented = sections()
    for path, model in models().items():
        assert path in documented, f"docs/config-reference.md: add a section headed `{path}`"
        section = documented[path]
        table = rows(section)
        example = {k for text in _FENCE.findall(section) for k in _keys(yaml.safe_load(text))}
        aliases = {str(f.alias): f for f in model.model_fields.values()}
        assert set(table) == set(aliases), f"`{path}`: rows {sorted(table)} != {sorted(aliases)}"
        for alias, field in aliases.items():
            assert alias in example, f"`{path}`: the example lacks `{alias}:`"
            default = table[alias][2]
            if field.is_required():
                assert default == "required", f"`{path}.{alias}`: default {default!r}"
            elif not isinstance(field.default, BaseModel):
                expected = f"`{json.dumps(field.default)}`"
                assert expected in default, f"`{path}.{alias}`: default {default!r}, {expected}"


def test_the_complete_example_loads() -> None:
    complete = sections()["complete example"]
    [text] = _FENCE.findall(complete)
    snapshot = load_text(text, "docs/config-reference.md")
    assert snapshot.workloads and snapshot.services and snapshot.policies
