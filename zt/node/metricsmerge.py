"""One /metrics for the whole node out of every worker process's exposition (pure functions).

Choice (worker processes): samples with the same name and the same labels are **summed**; no
`worker` label is added. A scrape then reads exactly as with one process (dashboards and the
lab's checks keep working), and per-worker figures exist where they mean something: the
`zt_worker_connections_total{worker=...}` family carries its own label. Because everything is
summed, follower workers report only additive families (connection counters, bytes, live
connection gauges); node-wide values (capture counters, pods, config generation) come from the
leader alone.

Text exposition format 0.0.4: `# HELP name text`, `# TYPE name kind`, `name{labels} value`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Family:
    name: str
    help: str = ""
    kind: str = "untyped"
    samples: dict[str, float] = field(default_factory=dict)  # raw label text -> value


def _split_sample(line: str) -> tuple[str, str, float] | None:
    """(name, raw labels without braces, value) of a sample line; None if it is not one."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, i, quoted = line[:brace], brace + 1, False
        while i < len(line):  # the closing brace outside a quoted, backslash-escaped value
            c = line[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == "}" and not quoted:
                break
            i += 1
        labels, rest = line[brace + 1 : i], line[i + 1 :]
    elif space != -1:
        name, labels, rest = line[:space], "", line[space:]
    else:
        return None
    try:
        return name, labels, float(rest.split()[0])
    except (IndexError, ValueError):
        return None


def parse(text: str) -> dict[str, Family]:
    """Families by name, in order of first appearance; malformed lines are skipped."""
    families: dict[str, Family] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            family = families.setdefault(parts[2], Family(parts[2]))
            text_ = parts[3] if len(parts) == 4 else ""
            if parts[1] == "HELP":
                family.help = text_
            else:
                family.kind = text_
        elif line and not line.startswith("#"):
            sample = _split_sample(line)
            if sample is not None:
                name, labels, value = sample
                family = families.setdefault(name, Family(name))
                family.samples[labels] = family.samples.get(labels, 0.0) + value
    return families


def merge(texts: Iterable[str], *, counters_only: bool = False) -> dict[str, Family]:
    """Sum samples of equal name and labels over several expositions."""
    out: dict[str, Family] = {}
    for text in texts:
        for name, family in parse(text).items():
            if counters_only and family.kind != "counter":
                continue
            into = out.setdefault(name, Family(name, family.help, family.kind))
            for labels, value in family.samples.items():
                into.samples[labels] = into.samples.get(labels, 0.0) + value
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def render(families: dict[str, Family]) -> str:
    lines: list[str] = []
    for family in families.values():
        lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
        for labels, value in family.samples.items():
            lines.append(f"{family.name}{{{labels}}} {_number(value)}" if labels else
                         f"{family.name} {_number(value)}")  # fmt: skip
    return "\n".join(lines) + "\n"


def merge_expositions(texts: Iterable[str]) -> str:
    return render(merge(texts))


def counters_of(text: str) -> str:
    """The counter families of an exposition: what a dead worker leaves behind, so the node's
    counters never go backwards when a worker is restarted (its gauges died with it)."""
    return render(merge([text], counters_only=True))
