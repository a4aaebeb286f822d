"""The edge: the mesh file's pydantic schema, its loader into frozen snapshots, and the watcher."""

from zt.config.loader import load_document, load_file, load_text
from zt.config.watcher import FileWatcher, SnapshotStore

__all__ = ["FileWatcher", "SnapshotStore", "load_document", "load_file", "load_text"]
