"""Fleet mode: many zt nodes configured and credentialed through one etcd cluster (docs/fleet.md).

Map of the room:
- etcd.py, etcdwatch.py, etcdwire.py, etcderrors.py: async etcd v3 client over the JSON gateway
  (TLS, user/password auth, endpoint failover, watches that notice a dead member within ~3 s).
- etcdserver.py, etcdtls.py: run etcd members (argv, clusters; their TLS material) for the lab
  and the tests.
- connect.py: EtcdSettings, the validated --etcd* flags shared by commands.
- keys.py: the key layout under the prefix (pure).
- meshdoc.py, push.py, meshwatch.py: mesh config as per-object keys; push/diff; the node's watch.
- csr.py, signer.py, certsource.py, join.py, tokens.py, acl.py, rotation.py, nodestate.py:
  certificates through etcd (signer, join tokens, etcd users/roles, root rotation, node state).
"""
