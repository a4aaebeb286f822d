"""Default values the commands show in --help, kept here so that `zt --help` imports none of the
modules that own them (those pull in cryptography, pydantic, pyroute2 ...).

tests/unit/cli/test_surface.py (test_help_defaults_are_the_owners_values) asserts each equals its
owner's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

CA_DIR = Path("/var/lib/zt/ca")  # zt/identity/ca.py DEFAULT_DIR
TRUST_DOMAIN = "cluster.local"  # zt/identity/ca.py DEFAULT_TRUST_DOMAIN
LEAF_LIFETIME = 86400.0  # zt/identity/ca.py DEFAULT_LEAF_LIFETIME
STATE_DIR = Path("/var/lib/zt/node")  # zt/node/options.py, zt/fleet/nodestate.py
ETCD_PREFIX = "/zt"  # zt/fleet/keys.py DEFAULT_PREFIX
PIN_DIR = Path("/sys/fs/bpf/zt")  # zt/capture/capture.py DEFAULT_PIN_DIR
POD_SOCKET = Path("/run/zt/pods.sock")  # zt/node/podapi.py DEFAULT_SOCKET
HANDSHAKE_TIMEOUT = 5.0  # zt/proxy/accept.py DEFAULT_LIMITS.handshake_timeout
POD_GRACE = 5.0  # zt/node/reconcile.py DEFAULT_GRACE
KTLS: Literal["auto", "on", "off"] = "auto"  # zt/node/options.py NodeOptions.ktls
SPLICE = False  # zt/node/options.py NodeOptions.splice
MAX_WORKERS = 64  # zt/node/options.py MAX_WORKERS
ALLOW_FORM = (  # zt/state/loopguard.py ALLOW_FORM
    "CIDR[:PORTS] with PORTS as 80, 8000-8100 or 80,443 "
    "(e.g. 10.0.0.0/8, 127.0.0.0/8:8080, fd00::/64:443, 192.0.2.7:80-90)"
)
