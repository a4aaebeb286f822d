"""etcd users and roles of a fleet (docs/fleet.md): who may read and write which keys.

  root              the operator: config push, `zt ca init/serve/token/rotate`
  zt-signer         readwrite {p}/ (a role for a signer that does not run as root)
  zt-node-{node}    read {p}/mesh/, read {p}/ca/, read {p}/certs/{node}/, readwrite {p}/csr/{node}/
  zt-join-{id}      readwrite {p}/join/{id}/, read {p}/ca/bundle (one join token)
Every call is idempotent (etcd's user/role add of an existing name is not an error here), so a
signer that crashed halfway through a join simply does it again.
"""

from __future__ import annotations

from zt.fleet import keys
from zt.fleet.etcd import EtcdClient, prefix_end
from zt.fleet.etcderrors import EtcdRequestError
from zt.fleet.etcdserver import bootstrap_auth
from zt.fleet.tokens import join_user

SIGNER_ROLE = "zt-signer"


def node_user(node: str) -> str:
    return f"zt-node-{node}"


async def bootstrap(client: EtcdClient, prefix: str, root_password: str) -> None:
    """Root user + auth on (idempotent: `client` may already authenticate as root), then the
    zt roles that depend on no node or token."""
    await bootstrap_auth(client, root_password)
    await ensure_roles(client, prefix)


async def ensure_roles(client: EtcdClient, prefix: str) -> None:
    """The roles that do not depend on a node or a token."""
    root = keys.root_prefix(prefix)
    await client.role_add(SIGNER_ROLE)
    await client.role_grant(SIGNER_ROLE, root, prefix_end(root), "readwrite")


async def node_role(client: EtcdClient, prefix: str, node: str, password: str) -> str:
    """User + role zt-node-{node} with `password`; returns the user name."""
    name = node_user(node)
    grants: list[tuple[bytes, str]] = [
        (keys.mesh_prefix(prefix), "read"),
        (keys.ca_prefix(prefix), "read"),
        (keys.cert_prefix(prefix, node), "read"),
        (keys.csr_prefix(prefix, node), "readwrite"),
    ]
    await _user_with_role(client, name, password, grants)
    return name


async def join_role(client: EtcdClient, prefix: str, token_id: str, password: str) -> str:
    """User + role zt-join-{id} with `password` (the token's secret); returns the user name."""
    name = join_user(token_id)
    bundle = keys.bundle_key(prefix)
    await client.user_add(name, password)
    await client.role_add(name)
    jp = keys.join_prefix(prefix, token_id)
    await client.role_grant(name, jp, prefix_end(jp), "readwrite")
    await client.role_grant(name, bundle, None, "read")
    await _grant(client, name)
    return name


async def drop_join_role(client: EtcdClient, token_id: str) -> None:
    name = join_user(token_id)
    await client.user_delete(name)
    await client.role_delete(name)


async def _user_with_role(
    client: EtcdClient, name: str, password: str, grants: list[tuple[bytes, str]]
) -> None:
    await client.user_add(name, password)
    await client.role_add(name)
    for key, perm in grants:
        assert perm in ("read", "readwrite")
        await client.role_grant(
            name, key, prefix_end(key), "read" if perm == "read" else "readwrite"
        )
    await _grant(client, name)


async def _grant(client: EtcdClient, name: str) -> None:
    try:
        await client.user_grant_role(name, name)
    except EtcdRequestError as exc:
        if "already" not in exc.message:
            raise
