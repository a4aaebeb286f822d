"""`zt lab config get|push`: the running lab's mesh document, wherever the lab keeps it: etcd with
the lab's root credentials (fleet lab), or the lab's mesh file (file lab, the nodes poll it)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from zt.config import load_file
from zt.lab import fleet
from zt.lab.state import LabState


def get(state: LabState) -> tuple[dict[str, object], int | None]:
    """The mesh document and its etcd revision (None for a file lab)."""
    if state.fleet:
        document, revision = fleet.get_document(state)
        return dict(document), revision
    loaded = yaml.safe_load(state.config.read_text())
    return (loaded if isinstance(loaded, dict) else {}), None


def render(document: dict[str, object], revision: int | None) -> str:
    text = yaml.safe_dump(document, sort_keys=False)
    return text + (f"# revision {revision}\n" if revision is not None else "")


def push(state: LabState, path: Path) -> str:
    """Validate exactly as `zt config check` and hand the document to the nodes; what happened."""
    if state.fleet:
        from zt.fleet import push as fleet_push  # noqa: PLC0415

        ctl = fleet.Control(state)
        result = fleet.in_control(ctl, lambda c: fleet_push.push(c, fleet.PREFIX, path))
        if result.diff.empty:
            return f"no change (revision {result.revision})"
        return f"pushed at revision {result.revision}: {result.diff.summary()}"
    load_file(path)  # refuse what a node would refuse, before the nodes see it
    tmp = state.config.with_suffix(".new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, state.config)  # atomic: a node never reads half a file
    return f"wrote {state.config} (the nodes reload it within about a second)"
