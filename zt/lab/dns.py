"""The lab's DNS: Debian's dnsmasq on the outside host as every node's `--dns-upstream`, and a
kubelet-like resolv.conf for each pod (docs/dns.md "In the node").

A pod's resolv.conf names `POD_NAMESERVER`, an address nothing in the lab has: only capture
(docs/design.md §6, DNS) makes it answer, through the pod's DNS proxy. It lives in
/etc/netns/<pod netns>/, which `ip netns exec` bind-mounts over /etc (`zt lab exec` runs pod
commands that way); the daemons and apps, run with `nsenter --net`, keep the host's.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from zt.lab import runner
from zt.lab.dnsmasq import DnsmasqError, dnsmasq_binary
from zt.lab.topology import LabPlan
from zt.timescale import scaled

POD_NAMESERVER = "10.96.0.53"  # kube-dns's place in a cluster; steered by capture, never routed
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*
# names the outside host's dnsmasq answers (the rest of `lab.test`: NXDOMAIN)
OUTSIDE_NAME = "outside.lab.test"
OUTSIDE_NAMES = (OUTSIDE_NAME, "www.outside.lab.test")
LOCAL_DOMAIN = "lab.test"
TTL = 60  # seconds: answers a proxy may cache (dnsmasq's local TTL is 0 unless told)
ROLE = "dnsmasq:ext"
LOG = "dnsmasq.log"
READY_TIMEOUT = 10.0


def resolv_conf(namespace: str = "lab", cluster_domain: str = "cluster.local") -> str:
    """What kubelet writes into a ClusterFirst pod (its namespace's search list, ndots:5)."""
    search = f"{namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}"
    return f"search {search}\nnameserver {POD_NAMESERVER}\noptions ndots:5 timeout:2 attempts:2\n"


def write_resolv_confs(lab: LabPlan) -> int:
    for pod in lab.pods:
        etc = NETNS_ETC / pod.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv_conf())
    return len(lab.pods)


def remove_resolv_confs(prefix: str) -> list[str]:
    """The /etc/netns directories of a lab's namespaces (also those of a crashed run)."""
    removed = []
    for etc in sorted(NETNS_ETC.glob(f"{prefix}*")):
        shutil.rmtree(etc, ignore_errors=True)
        removed.append(str(etc))
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when nothing else keeps files there
    return removed


def upstream_args(lab: LabPlan) -> tuple[str, ...]:
    """`zt run` flags that make the outside host's dnsmasq a node's upstream."""
    return ("--dns-upstream", str(lab.external_ipv4))


def start_dnsmasq(lab: LabPlan, state_dir: Path) -> tuple[int, Path]:
    """dnsmasq on the outside host's port 53 (its own config only); (pid, query log)."""
    log = state_dir / LOG
    records = [f"--host-record={n},{lab.external_ipv4},{lab.external_ipv6}" for n in OUTSIDE_NAMES]
    argv = [
        dnsmasq_binary(), "--no-daemon", "--keep-in-foreground", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", f"--listen-address={lab.external_ipv4}",
        f"--listen-address={lab.external_ipv6}", "--bind-interfaces", "--port=53",
        *records, f"--local=/{LOCAL_DOMAIN}/", f"--local-ttl={TTL}", "--log-queries",
        f"--log-facility={log}", "--pid-file=", "--user=root",
    ]  # fmt: skip
    pid = runner.spawn(lab.external_netns, argv, state_dir / "dnsmasq.out")
    deadline = time.monotonic() + scaled(READY_TIMEOUT)
    while time.monotonic() < deadline:
        if log.exists() and "started" in log.read_text():
            return pid, log
        if not runner.alive(pid):
            break
        time.sleep(0.05)
    runner.stop(pid)
    out = runner.tail(state_dir / "dnsmasq.out", 5)
    raise DnsmasqError(
        f"dnsmasq on {lab.external_netns}: not started ({out.strip() or 'no output'})"
    )


def queries(log: Path, name: str) -> int:
    """How many queries for `name` reached the outside host's dnsmasq (its --log-queries)."""
    with contextlib.suppress(OSError):
        return sum(1 for line in _lines(log) if "query[" in line and f"] {name} from" in line)
    return 0


def _lines(log: Path) -> Iterator[str]:
    yield from log.read_text().splitlines()
