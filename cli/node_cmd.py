"""`zt node join|show`: a fleet node's credentials (docs/fleet.md).

`join` authenticates to etcd as the token's join user, generates the node key and the node's etcd
password here, and writes the state directory `zt run --etcd --state-dir` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from zt.fleet import join, tokens
from zt.fleet.etcd import EtcdClient
from zt.fleet.etcderrors import EtcdAuthFailed
from zt.fleet.nodestate import DEFAULT_DIR, NodeState, prepare

from ._common import reports_errors
from ._etcd import (
    DEFAULT_PREFIX,
    CacertOpt,
    EtcdOpt,
    PrefixOpt,
    settings_from,
    with_client,
)
from .ca_cmd import parse_duration

app = typer.Typer(help="A fleet node's identity and etcd credentials.", no_args_is_help=True)

StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="the node's state directory (written by join)")
]


class TokenRejected(join.JoinRefused):
    """etcd refused the token's user: the token is mistyped, or expired and swept."""


@app.command("join")
@reports_errors
def join_cmd(
    *,
    etcd: EtcdOpt,
    token: Annotated[str, typer.Option(help="ztjoin-... from `zt ca token create`")],
    node: Annotated[str, typer.Option(help="this node's name (as workloads' node field)")],
    etcd_cacert: CacertOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    state_dir: StateDirOpt = DEFAULT_DIR,
    timeout: Annotated[str, typer.Option(help="how long to wait for the signer")] = "30s",
) -> None:
    """Join the fleet with a one-time token; writes the node key, certificate, bundle and etcd
    credentials to --state-dir."""
    tok = tokens.Token.parse(token)
    wait = parse_duration("--timeout", timeout)
    settings = dataclasses.replace(
        settings_from(etcd, etcd_cacert, prefix=etcd_prefix), user=tok.user, password=tok.secret
    )
    created = not state_dir.exists()
    prepare(state_dir)  # before the token is spent

    async def go(client: EtcdClient) -> join.Joined:
        try:
            return await join.request_join(client, settings.prefix, tok, node, timeout=wait)
        except EtcdAuthFailed:
            raise TokenRejected(
                "token_unknown",
                f"etcd does not know token {tokens.PREFIX}{tok.id} (mistyped, or expired "
                f"and removed); create one with `zt ca token create --node {node}`",
            ) from None

    try:
        joined = with_client(settings, go)
    except BaseException:
        if created:  # a refused join leaves no empty state dir behind
            with contextlib.suppress(OSError):
                state_dir.rmdir()
        raise
    state = NodeState.write(
        state_dir,
        node_key_pem=joined.node_key_pem,
        node_cert_pem=joined.node_cert_pem,
        bundle_pem=joined.bundle.roots_pem,
        endpoints=settings.endpoints,
        cacert=etcd_cacert,
        user=joined.etcd_user,
        password=joined.etcd_password,
        prefix=settings.prefix,
    )
    typer.echo(
        f"node {state.node} joined trust domain {state.trust_domain} as etcd user {state.user}; "
        f"state in {state_dir}"
    )


@app.command("show")
@reports_errors
def show(
    state_dir: StateDirOpt = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """What a joined node's state directory holds (no secrets)."""
    s = NodeState.load(state_dir)
    doc = {
        "node": s.node,
        "trust_domain": s.trust_domain,
        "endpoints": list(s.endpoints),
        "etcd_user": s.user,
        "prefix": s.prefix,
        "state_dir": str(s.directory),
        "mesh_cache": str(s.mesh_cache_path),
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    for k, v in doc.items():
        typer.echo(f"{k}: {v}")
