"""What every Envoy zt starts needs: its certificate files and HBONE's TLS context, and a GET on its
admin listener inside a network namespace. Shared by the lab's waypoint (zt/lab/waypoint.py) and the node bench's Envoy
(zt/bench/envoy_node.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zt.capture.netns import run_in_netns
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # leaf + chain
    key: Path
    roots: Path


def write_tls(ca: CertificateAuthority, identity: SpiffeId, base: Path) -> TlsFiles:
    """A fresh leaf for `identity` from `ca`, written as `<base>.crt|.key|.roots` (key 0600)."""
    leaf = ca.issue(identity, now=time.time())
    files = TlsFiles(base.with_suffix(".crt"), base.with_suffix(".key"), base.with_suffix(".roots"))
    files.cert.write_bytes(leaf.cert_pem + leaf.chain_pem)
    files.key.write_bytes(leaf.key_pem)
    files.key.chmod(0o600)
    files.roots.write_bytes(leaf.roots_pem)
    return files


def common_tls_context(
    cert: Path, key: Path, roots: Path, san_matchers: list[dict[str, str]]
) -> dict[str, Any]:
    """Envoy's CommonTlsContext for HBONE: TLS 1.3 only, ALPN h2, this side's certificate, the
    mesh roots, and the peer's URI SAN matched by `san_matchers` (Envoy StringMatchers)."""
    validation: dict[str, Any] = {"trusted_ca": {"filename": str(roots)}}
    if san_matchers:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": m} for m in san_matchers
        ]
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "alpn_protocols": ["h2"],
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(cert)},
                "private_key": {"filename": str(key)},
            }
        ],
        "validation_context": validation,
    }


def parse_stats(body: str) -> dict[str, int]:
    """Counters and gauges of an admin `/stats?format=json` answer (what proves what Envoy
    carried)."""
    out: dict[str, int] = {}
    for item in json.loads(body).get("stats", []):
        name, value = item.get("name"), item.get("value")
        if isinstance(name, str) and isinstance(value, int):
            out[name] = value
    return out


def admin_get(netns: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET on the admin listener at 127.0.0.1:`port` inside `netns` (Envoy keeps HTTP/1.1
    connections open, so urllib's `Connection: close` is what ends the read)."""

    def get() -> tuple[int, str]:
        url = f"http://127.0.0.1:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), ""

    return run_in_netns(netns, get, timeout=timeout + 5)
