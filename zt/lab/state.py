"""What a running lab is, on disk, so `status`, `demo`, `exec` and `down` work from later processes:
`/run/zt/lab-<name>/lab.json` holds the plan's parameters and every process the lab started (pid
plus its start time, so a recycled pid is never killed)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from zt.errors import NotFoundError, UsageError
from zt.lab import topology

STATE_ROOT = Path("/run/zt")


class LabNotFound(NotFoundError):
    reason = "lab_not_found"


class LabStateError(UsageError):
    reason = "lab_state_invalid"


@dataclass(frozen=True)
class Proc:
    role: str  # "node:<node>", "app:<pod or ext>", "etcd:<member>", "signer", "prometheus[:relay]",
    # "waypoint", "web:<pod>"
    pid: int
    start_time: int  # /proc/<pid>/stat field 22: tells this process from a later one with its pid
    log: str


@dataclass(frozen=True)
class LabState:
    name: str
    nodes: int
    pods: int
    capture: str
    state_dir: str
    procs: tuple[Proc, ...] = field(default=())
    log_format: str = "text"  # the daemons' access-log format (zt.lab.logs reads both)
    node_args: tuple[str, ...] = ()  # extra `zt run` flags, reused when a node is restarted
    control: str = "file"  # "file": one mesh file and CA dir; "etcd": the fleet control host
    prometheus: str = ""  # the host's URL of the lab's Prometheus (`up --prometheus`), else ""
    waypoint: bool = False  # `up --waypoint`: the waypoint Envoy and the service behind it

    @property
    def fleet(self) -> bool:
        return self.control == "etcd"

    @property
    def plan(self) -> topology.LabPlan:
        return topology.plan(
            self.name, self.nodes, self.pods, control=self.fleet, waypoint=self.waypoint
        )

    @property
    def dir(self) -> Path:
        return Path(self.state_dir)

    @property
    def config(self) -> Path:
        return self.dir / "mesh.yaml"

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"

    def node_state_dir(self, node: str) -> Path:
        """A fleet node's state dir (`zt node join --state-dir`): its key, certs, etcd creds."""
        return self.dir / "nodes" / node

    def proc(self, role: str) -> Proc | None:
        return next((p for p in self.procs if p.role == role), None)

    def node_proc(self, node: str) -> Proc | None:
        return next((p for p in self.procs if p.role == f"node:{node}"), None)

    def with_proc(self, proc: Proc) -> LabState:
        kept = tuple(p for p in self.procs if p.role != proc.role)
        return replace(self, procs=(*kept, proc))

    def without_role(self, role: str) -> LabState:
        return replace(self, procs=tuple(p for p in self.procs if p.role != role))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> LabState:
        try:
            raw = json.loads(text)
            procs = tuple(Proc(**p) for p in raw.pop("procs", []))
            node_args = tuple(str(a) for a in raw.pop("node_args", []))
            return cls(**raw, procs=procs, node_args=node_args)
        except (ValueError, TypeError) as exc:
            raise LabStateError(
                f"{source}: got unreadable lab state ({exc}), expected lab.json"
            ) from None


def state_dir(name: str) -> Path:
    return STATE_ROOT / f"lab-{name}"


def save(state: LabState) -> None:
    """Atomic: a crash mid-write never leaves a half file that `down` can't read."""
    path = state.dir / "lab.json"
    state.dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)


def load(name: str) -> LabState:
    path = state_dir(name) / "lab.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LabNotFound(f"lab {name!r}: no state at {path} (run `zt lab up` first)") from None
    return LabState.from_json(text, str(path))


def load_or_none(name: str) -> LabState | None:
    with contextlib.suppress(LabNotFound, LabStateError):
        return load(name)
    return None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (after the parenthesised command name), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def same_process(proc: Proc) -> bool:
    return start_time(proc.pid) == proc.start_time
