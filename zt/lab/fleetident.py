"""A node asking the signer for another node's workload identity, with nothing but its own state
dir (what an attacker who owns that node has): the signer must refuse it (`workload_not_on_node`),
say so in its log, and the node side must count the refusal."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from zt.fleet.certsource import REFUSED_METRIC, EtcdCertificateSource
from zt.fleet.nodestate import NodeState
from zt.identity.errors import CertificateRefused
from zt.identity.spiffe import SpiffeId
from zt.lab import fleet, logs
from zt.lab.demodriver import Row
from zt.lab.state import LabState
from zt.telemetry.metrics import Registry


@dataclass(frozen=True)
class Attempt:
    node: str  # who asked
    identity: str  # what for (placed on another node)
    reason: str  # the signer's refusal reason; "" if it signed (a failure)
    message: str
    counted: float  # zt_certificate_refused_total{reason} on the asking side afterwards
    signer_logged: bool


def foreign_identity(state: LabState, asker: str) -> str:
    """The identity of the first HBONE pod of another node."""
    lab = state.plan
    other = next(n for n in lab.nodes if n.name != asker)
    return f"spiffe://cluster.local/ns/lab/sa/sa-{lab.pods_of(other.name)[0].name}"


def ask_as(state: LabState, asker: str, identity: str, timeout: float = 10.0) -> Attempt:
    """With `asker`'s state dir only, from inside its namespace, ask for `identity`."""
    node_state = NodeState.load(state.node_state_dir(asker))
    registry = Registry()
    signer_log = fleet.Control(state).log(fleet.SIGNER)
    offset = logs.size(signer_log)

    source = EtcdCertificateSource(
        node_state.settings().client,
        node_state.prefix,
        node_state.node,
        node_state.node_key_pem,
        node_state.node_cert_pem,
        roots_pem=node_state.bundle_pem,
        timeout=timeout,
        registry=registry,
    )

    async def go() -> tuple[str, str]:
        try:
            await source.issue(SpiffeId.parse(identity), now=time.time())
        except CertificateRefused as exc:
            return exc.refusal, str(exc)
        finally:
            await source.close()
        return "", "signed"

    reason, message = fleet.in_netns(state.plan.node(asker).netns, go, timeout + 10)
    counted = _sample(registry, reason) if reason else 0.0
    logged = _logged(signer_log, offset, asker, reason)
    return Attempt(asker, identity, reason, message, counted, logged)


def _sample(registry: Registry, reason: str) -> float:
    for line in registry.render().splitlines():
        if line.startswith(REFUSED_METRIC + "{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _logged(log: Path, offset: int, node: str, reason: str, wait: float = 2.0) -> bool:
    """The signer's log, from `offset`, names the node and the refusal (within `wait` s)."""
    deadline = time.monotonic() + wait
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if reason and reason in text and node in text:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def identity_row(state: LabState, title: str) -> Row:
    asker = state.plan.nodes[-1].name
    identity = foreign_identity(state, asker)
    got = ask_as(state, asker, identity)
    ok = got.reason == "workload_not_on_node" and got.counted >= 1 and got.signer_logged
    detail = (
        f"refused {got.reason or 'NOT (it signed)'}; counted "
        f"{REFUSED_METRIC}{{reason}}={got.counted:g} on {asker}'s side; signer log "
        f"{'names it' if got.signer_logged else 'has no line for it'}"
    )
    return Row(
        title, f"{asker} asks for {identity.rpartition('/sa/')[2]}", "-", "-", "-", ok, detail
    )
