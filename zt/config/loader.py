"""Load a mesh file (YAML or JSON) into an immutable `Snapshot`, or say exactly what is wrong.

Pydantic checks shapes and values; `_cross_check` then finds what only the whole document shows
(duplicate uids, one IP claimed twice on a network, a service port mapping to nothing, references to
services or policies that do not exist). Every problem is reported, each with its field path.

A mesh file is untrusted input to a process that must keep serving, so the loader bounds what one
document may cost before pydantic sees it: its size (MAX_FILE_BYTES), its nesting depth (MAX_DEPTH,
checked while composing, so PyYAML's recursive composer never nears Python's recursion limit), and
the size of the tree once YAML aliases are expanded (MAX_EXPANDED_NODES: "billion laughs" is a few
hundred bytes of aliases). An empty document is refused: a truncate-then-write editor caught halfway
must not read as "serve nothing"; an intentionally empty mesh is written `{}`.
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

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32  # a mesh file nests about 9 deep (policies[].rules[][][].serviceAccounts[].*)
MAX_EXPANDED_NODES = 1_000_000  # scalars + collections after alias expansion


class ConfigEmpty(ConfigError):
    reason = "config_empty"


class ConfigTooLarge(ConfigError):
    reason = "config_too_large"


class ConfigTooDeep(ConfigError):
    reason = "config_too_deep"


class ConfigAliasBomb(ConfigError):
    reason = "config_alias_expansion"


class ConfigUnreadable(ConfigError):
    reason = "config_unreadable"


EMPTY_EXPECTED = "a mesh document (an intentionally empty mesh is written `{}`)"


def _line(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "(document)"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one) and
    documents nested deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                depth = f"depth {self._depth}"
                problem = FieldProblem(_line(mark), depth, f"at most {MAX_DEPTH} levels of nesting")
                raise ConfigTooDeep(self.name, [problem])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _BoundedLoader, node: yaml.MappingNode) -> dict[Any, Any]:
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


_BoundedLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _EnumTagLoader(_BoundedLoader):
    """Reads a local `!Tag value` as the one-key mapping `{Tag: value}`: ztunnel's serde_yaml 0.9
    writes its enums so (`namespaces: [!Exact default]`, zt/config/ztunnel.py)."""


def _construct_enum_tag(loader: _BoundedLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: object
    if isinstance(node, yaml.MappingNode):
        value = _construct_mapping(loader, node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return {suffix: value}


_EnumTagLoader.add_multi_constructor("!", _construct_enum_tag)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_expansion(root: yaml.Node, source: str, budget: int = MAX_EXPANDED_NODES) -> int:
    """The node count of `root` with every alias expanded, computed without expanding (each shared
    node is sized once, bottom-up, iteratively); refused past `budget` or when an alias refers to
    its own ancestor (a recursive structure). Linear in the distinct nodes composed."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if not children_done:
            if id(node) in open_:
                problem = FieldProblem(_line(node.start_mark), "an alias of its own ancestor",
                                       "no recursive aliases")  # fmt: skip
                raise ConfigAliasBomb(source, [problem])
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        open_.discard(id(node))
        total = 1 + sum(size[id(k)] for k in kids)
        if total > budget:
            problem = FieldProblem(_line(node.start_mark), f"{total}+ nodes once aliases are expanded",
                                   f"at most {budget}")  # fmt: skip
            raise ConfigAliasBomb(source, [problem])
        size[id(node)] = total
    return size[id(root)]


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


def validation_problems(error: ValidationError) -> list[FieldProblem]:
    """Pydantic's errors as problems with field paths, in the loader's words (also used by the
    fleet's per-object decoder, so a file and an etcd object are refused alike)."""
    return [FieldProblem(render(e["loc"]), e.get("input"), _expected(e)) for e in error.errors()]


def _json_depth(document: object) -> int:
    """Nesting depth of parsed JSON, iteratively (json.loads itself raises RecursionError only far
    deeper than MAX_DEPTH)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        items = (
            value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        )
        stack.extend((v, depth + 1) for v in items)
    return deepest


def _parse_json(text: str, source: str) -> object:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigError(source, [FieldProblem(where, exc.msg, "valid JSON")]) from None
    except RecursionError:
        document, depth = None, MAX_DEPTH + 1
    else:
        depth = _json_depth(document)
    if depth > MAX_DEPTH:
        problem = FieldProblem(
            "(document)", f"depth > {MAX_DEPTH}", f"at most {MAX_DEPTH} levels of nesting"
        )
        raise ConfigTooDeep(source, [problem])
    return document


def _parse_yaml(text: str, source: str, enum_tags: bool = False) -> object:
    try:
        loader = (_EnumTagLoader if enum_tags else _BoundedLoader)(
            text
        )  # the reader already rejects unprintable characters
        loader.name = source
        try:
            node = loader.get_single_node()
            if node is None:  # empty, whitespace or comments only
                return None
            check_expansion(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "(document)"
        raise ConfigError(source, [FieldProblem(where, str(exc), "valid YAML")]) from None


def parse_text(text: str, source: str, *, enum_tags: bool = False) -> object:
    """YAML (a superset of JSON) text to plain data; syntax errors and documents past the limits
    (size, depth, alias expansion) become ConfigError. An empty document parses to None.
    `enum_tags`: local tags read as one-key mappings (ztunnel's local config)."""
    if len(text) > MAX_FILE_BYTES:
        problem = FieldProblem("(file)", f"{len(text)} characters", f"at most {MAX_FILE_BYTES}")
        raise ConfigTooLarge(source, [problem])
    if source.endswith(".json"):
        return _parse_json(text, source)
    return _parse_yaml(text, source, enum_tags)


def load_document(document: object, source: str) -> Snapshot:
    """Validate plain data (as parsed from YAML/JSON) and build the snapshot. None (an empty
    document) is refused: an empty mesh is written `{}`."""
    if document is None:
        raise ConfigEmpty(source, [FieldProblem("(document)", "an empty document", EMPTY_EXPECTED)])
    if not isinstance(document, dict):
        expected = "a mapping with workloads, services, policies"
        raise ConfigError(source, [FieldProblem("(document)", document, expected)])
    try:
        mesh = MeshFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None
    problems = cross_check(mesh)
    if problems:
        raise ConfigError(source, problems)
    return convert.snapshot(mesh)


def load_text(text: str, source: str = "<text>") -> Snapshot:
    return load_document(parse_text(text, source), source)


def read_bounded(path: Path) -> str:
    """The file's text, refused past MAX_FILE_BYTES without reading more than one byte beyond."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            problem = FieldProblem(
                "(file)", f"more than {MAX_FILE_BYTES} bytes", f"at most {MAX_FILE_BYTES}"
            )
            raise ConfigTooLarge(str(path), [problem])
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigUnreadable(
            str(path), [FieldProblem("(file)", str(path), f"a readable UTF-8 file ({exc})")]
        ) from None


def load_file(path: Path | str) -> Snapshot:
    path = Path(path)
    return load_text(read_bounded(path), str(path))
