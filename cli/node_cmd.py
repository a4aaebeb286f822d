"""`zt node join|show`: a fleet node's credentials (docs/fleet.md).

`join` authenticates to etcd as the token's join user, generates the node key and the node's etcd
password here, and writes the state directory `zt run --etcd --state-dir` reads.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import _values
from ._common import reports_errors, sub_app
from ._defaults import STATE_DIR
from ._etcd import (
    DEFAULT_PREFIX,
    CacertOpt,
    EtcdOpt,
    PrefixOpt,
    settings_from,
    with_client,
)

if TYPE_CHECKING:  # imported by the commands: `zt --help` loads no cryptography or httpx
    from zt.fleet.etcd import EtcdClient

app = sub_app("A fleet node's identity and etcd credentials.")

JoinStateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir", help="the node's state directory (written by join)", file_okay=False
    ),
]
StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        help="the node's state directory (written by join)",
        exists=True,
        file_okay=False,
    ),
]


@app.command("join")
@reports_errors
def join_cmd(
    *,
    etcd: EtcdOpt,
    token: Annotated[
        str,
        typer.Option(help="ztjoin-... from `zt ca token create`", parser=_values.join_token),
    ],
    node: Annotated[
        str,
        typer.Option(help="this node's name (as workloads' node field)", parser=_values.node_name),
    ],
    etcd_cacert: CacertOpt = None,
    etcd_prefix: PrefixOpt = DEFAULT_PREFIX,
    state_dir: JoinStateDirOpt = STATE_DIR,
    timeout: Annotated[
        float,
        typer.Option(
            help="how long to wait for the signer: 30s, 2m, ... (seconds)",
            parser=_values.duration(),
            metavar="DURATION",
        ),
    ] = 30.0,
) -> None:
    """Join the fleet with a one-time token; writes the node key, certificate, bundle and etcd
    credentials to --state-dir.

    \b
    Example:
      zt node join --etcd https://10.0.0.1:2379 --etcd-cacert etcd-ca.pem \\
        --token ztjoin-... --node node1 --state-dir /var/lib/zt/node
    """
    import contextlib  # noqa: PLC0415
    import dataclasses  # noqa: PLC0415

    from zt.fleet import join, tokens  # noqa: PLC0415
    from zt.fleet.etcderrors import EtcdAuthFailed  # noqa: PLC0415
    from zt.fleet.nodestate import NodeState, prepare  # noqa: PLC0415

    tok = tokens.Token.parse(token)
    settings = dataclasses.replace(
        settings_from(etcd, etcd_cacert, prefix=etcd_prefix), user=tok.user, password=tok.secret
    )
    created = not state_dir.exists()
    prepare(state_dir)  # before the token is spent

    async def go(client: "EtcdClient") -> join.Joined:
        try:
            return await join.request_join(client, settings.prefix, tok, node, timeout=timeout)
        except EtcdAuthFailed:
            # etcd refused the token's user: the token is mistyped, or expired and swept
            raise join.JoinRefused(
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
    state_dir: StateDirOpt = STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
) -> None:
    """What a joined node's state directory holds (no secrets).

    \b
    Example:
      zt node show --state-dir /var/lib/zt/node --json
    """
    from zt.fleet.nodestate import NodeState  # noqa: PLC0415

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
