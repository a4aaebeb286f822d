"""The lever "several worker processes per node": `zt run --workers 2` on a real lab.

The kernel fact it rests on is proven first, without the daemon: when sk_lookup assigns a socket
of an SO_REUSEPORT group (bpf_sk_assign flags 0), the kernel selects inside the group by the
4-tuple hash (inet_lookup_run_sk_lookup -> inet_lookup_reuseport); the connect-mode outbound path
(connect4 rewrite to <pod ip>:15001) is an ordinary lookup, spread by the group too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import zt
from tests.netns.fixtures import topo
from tests.netns.sockets import app_server, connect_from
from tests.netns.topo import Topology
from tests.node.lab import Lab, identity, metric
from tests.node.test_restart import pod_api
from zt.addr import SocketAddr
from zt.capture import Capture, ListenerSockets, Mode, PodCapture, parse_ips
from zt.capture.netns import dial_marked, open_listener
from zt.hbone.request import ConnectRequest
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.identity.tls import cached_client_context
from zt.lab import control, mesh, runner
from zt.lab import logs as access_logs
from zt.lab.apps import connect_only, exchange
from zt.node.podnet import PodNet
from zt.node.workers import HEARTBEAT_EVERY, HEARTBEAT_TIMEOUT
from zt.proxy.client import open_tunnel
from zt.proxy.driver import HboneDriver
from zt.proxy.tls import server_peer_check
from zt.timescale import scaled

pytestmark = pytest.mark.root

__all__ = ["topo"]  # the netns fixture, for the kernel-fact test

WORKERS = ("--workers", "2")
N = 40  # connections per check: P(all on one of 2 workers by hash) = 2**-39


# -- the kernel fact -------------------------------------------------------------------------------
def _group(topo: Topology, mode: Mode) -> ListenerSockets:
    made: list[socket.socket] = []
    try:
        for port in (15001, 15006, 15008):
            transparent = mode == "sklookup" and port == 15001
            made.append(open_listener(topo.pod, port, transparent=transparent, reuse_port=True))
            made[-1].setblocking(False)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return ListenerSockets(*made)


def _sockets(group: ListenerSockets | None) -> list[socket.socket]:
    if group is None:
        return []
    return [group.outbound, group.inbound_plain, group.inbound_hbone]


def _drain(sock: socket.socket) -> int:
    """Accept (and close) every connection queued on a non-blocking listener."""
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def _dial_many(netns: str, host: str, port: int, count: int) -> None:
    for _ in range(count):
        connect_from(netns, host, port).close()  # the handshake completed: it is queued


@pytest.mark.parametrize("mode", ["connect", "sklookup"])
def test_sk_lookup_assignment_is_spread_over_the_reuseport_group(
    topo: Topology, mode: Mode
) -> None:
    """Only `leader`'s sockets are in the sockmap; `follower`'s join their groups. Connections
    are spread over both (inbound 15008 and 15006 by sk_lookup, outbound 15001 by connect4 or
    sk_lookup); once the leader's sockets close, inbound fails closed although the follower
    still listens (the sockmap entry is gone: SK_DROP)."""
    cap = Capture.open(mode)
    leader = follower = None
    remote = app_server(topo.peer, 8080)
    remote.setblocking(False)
    try:
        leader, follower = _group(topo, mode), _group(topo, mode)
        ips = parse_ips([topo.pod_ip4, topo.pod_ip6])
        cap.enroll(PodCapture(topo.pod, topo.pod_path, ips, leader))
        for port, kind in ((15008, "inbound_hbone"), (8080, "inbound_plain")):
            _dial_many(topo.peer, topo.pod_ip4, port, N)
            got = (_drain(getattr(leader, kind)), _drain(getattr(follower, kind)))
            assert sum(got) == N and min(got) > 0, f"inbound :{port} spread {got}"
        _dial_many(topo.pod, topo.peer_ip4, 8080, N)
        got = (_drain(leader.outbound), _drain(follower.outbound))
        assert sum(got) == N and min(got) > 0, f"outbound spread {got}"
        assert _drain(remote) == 0, "an outbound connection bypassed the listeners"

        for sock in _sockets(leader):
            sock.close()
        refused = 0
        for _ in range(5):
            try:
                connect_from(topo.peer, topo.pod_ip4, 15008, timeout=1.0).close()
            except OSError:
                refused += 1
        assert refused == 5 and _drain(follower.inbound_hbone) == 0
        assert cap.counters()["lookup_no_listener"] >= 5
    finally:
        cap.close()
        remote.close()
        for group in (leader, follower):
            for sock in _sockets(group):
                sock.close()


def test_a_closed_group_member_hands_its_queue_to_the_others(topo: Topology) -> None:
    """net.ipv4.tcp_migrate_req=1 (what a node with workers sets in each pod, PodNet): the
    connections queued on a follower that dies are accepted by the leader, not reset."""
    cap = Capture.open("connect")
    leader = follower = None
    try:
        leader, follower = _group(topo, "connect"), _group(topo, "connect")
        ips = parse_ips([topo.pod_ip4, topo.pod_ip6])
        cap.enroll(PodCapture(topo.pod, topo.pod_path, ips, leader))
        PodNet(topo.pod_path).migrate_requests()
        clients = [connect_from(topo.peer, topo.pod_ip4, 8080) for _ in range(N)]
        follower.inbound_plain.close()  # queued, never accepted: as when a worker is killed
        try:
            assert _drain(leader.inbound_plain) == N
        finally:
            for client in clients:
                client.close()
    finally:
        cap.close()
        for group in (leader, follower):
            for sock in _sockets(group):
                sock.close()


# -- the daemon ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["connect", "sklookup"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    name = f"nw{request.param[0]}{os.getpid() % 1000}"
    try:
        state = control.up(control.UpOptions(name=name, capture=request.param, node_args=WORKERS))
        yield Lab(state)
    finally:
        control.down(name)
        assert control.down(name) == []


def config_dump(lab: Lab, node: str) -> dict[str, object]:
    status, body = runner.http_get(lab.plan.node(node).netns, runner.ADMIN_PORT, "/config_dump")
    assert status == 200, body
    doc: dict[str, object] = json.loads(body)
    return doc


def followers(lab: Lab, node: str) -> list[int]:
    workers = config_dump(lab, node)["workers"]
    assert isinstance(workers, list)
    return [int(w["pid"]) for w in workers]


def _metrics_dir(follower: int) -> Path:
    """The node's multiprocess metrics directory, as its leader told the follower."""
    argv = Path(f"/proc/{follower}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--metrics-dir") + 1].decode())


def serving(lab: Lab, node: str) -> list[list[str]]:
    """The pods each follower serves, as the leader's /config_dump shows them."""
    workers = config_dump(lab, node)["workers"]
    assert isinstance(workers, list)
    return [list(w["serving"]) for w in workers]


def per_worker(lab: Lab, node: str, listener: str) -> tuple[float, float]:
    """zt_worker_connections_total of worker 0 (the leader) and 1, from the leader's /metrics."""
    text = lab.metrics(node)
    leader, follower = (
        metric(text, "zt_worker_connections_total", worker=str(w), listener=listener)
        for w in (0, 1)
    )
    return leader, follower


def grew(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def wait_until(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    # patience, not a timing assertion: an emulated VM guest starts a follower process slowly
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        with contextlib.suppress(OSError, AssertionError):
            if check():
                return True
        time.sleep(0.2)
    return False


def ready(lab: Lab, node: str) -> bool:
    return runner.http_get(lab.plan.node(node).netns, runner.READY_PORT, "/healthz/ready")[0] == 200


def logs(lab: Lab) -> str:
    return "\n".join(f"{n}:\n{runner.tail(lab.log(n), 25)}" for n in ("node1", "node2"))


def outbound_echoes(lab: Lab, count: int) -> int:
    """How many of `count` connections pod1-1 -> pod2-1 (captured on node1) echo."""
    a, b = lab.pod("pod1-1"), lab.pod("pod2-1")
    done = [
        exchange(a.netns, str(b.ipv4), mesh.APP_PORT, b"w" * 64, timeout=5) for _ in range(count)
    ]
    for ex in done:
        if not ex.echoed:
            print("not echoed:", ex)
    return sum(ex.echoed for ex in done)


def hbone_echoes(lab: Lab, count: int) -> int:
    """`count` HBONE connections (each its own TLS connection, so each is a new lookup on
    pod2-1's :15008) from pod1-1's identity, each a CONNECT to the app and an echo."""
    src, dst = lab.pod("pod1-1"), lab.pod("pod2-1")
    ca = CertificateAuthority.load(lab.state.ca_dir)
    context = cached_client_context(ca.issue(SpiffeId.parse(identity(src)), now=time.time()))
    check = server_peer_check([SpiffeId.parse(identity(dst))])

    async def one(sock: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        _, driver = await loop.create_connection(
            lambda: HboneDriver("client", peer_check=check), sock=sock, ssl=context,
            server_hostname="",
        )  # fmt: skip
        try:
            await driver.ready
            authority = SocketAddr(ipaddress.ip_address(str(dst.ipv4)), mesh.APP_PORT)
            stream = await open_tunnel(driver, ConnectRequest(authority=authority), timeout=10)
            await stream.write(b"hbone-worker")
            got = b""
            while len(got) < 12:
                got += bytes(await stream.read())
            stream.write_eof()
            return got == b"hbone-worker"
        finally:
            driver.close()

    async def all_of() -> int:
        ok = 0
        for _ in range(count):
            sock = dial_marked(src.netns, (str(dst.ipv4), 15008))
            async with asyncio.timeout(15):
                ok += await one(sock)
        return ok

    return asyncio.run(all_of())


def test_connections_are_answered_and_spread_over_both_workers(lab: Lab) -> None:
    assert len(followers(lab, "node1")) == len(followers(lab, "node2")) == 1
    out_before = per_worker(lab, "node1", "outbound")
    in_before = per_worker(lab, "node2", "hbone")
    opened_before = metric(lab.metrics("node2"), "istio_tcp_connections_opened_total",
                           reporter="destination", destination_workload="pod2-1")  # fmt: skip

    assert outbound_echoes(lab, N) == N
    assert hbone_echoes(lab, N) == N

    out = grew(out_before, per_worker(lab, "node1", "outbound"))
    assert sum(out) == N and min(out) > 0, f"outbound (captured) by worker: {out}"
    inb = grew(in_before, per_worker(lab, "node2", "hbone"))
    # N direct connections, plus at most one pooled connection per node1 worker
    assert N <= sum(inb) <= N + 2 and min(inb) > 0, f"inbound HBONE (sk_lookup) by worker: {inb}"
    # the follower's connections show in the leader's /metrics: summed, every one counted once
    opened = metric(lab.metrics("node2"), "istio_tcp_connections_opened_total",
                    reporter="destination", destination_workload="pod2-1")  # fmt: skip
    assert opened - opened_before >= 2 * N - 2  # N direct + the outbound ones' tunnels
    text = lab.metrics("node2")
    assert metric(text, "zt_workers") == 2 and metric(text, "zt_pods") == 2  # not summed
    # one exposition, valid for prometheus_client's parser, at both of ztunnel's paths
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [build] = families["istio_build"].samples
    assert build.labels == {"component": "ztunnel", "tag": zt.__version__} and build.value == 1
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    status, stats = runner.http_get(
        lab.plan.node("node2").netns, runner.METRICS_PORT, "/stats/prometheus"
    )
    assert status == 200
    assert {f.name for f in text_string_to_metric_families(stats)} == set(families)


def outbound_records(lab: Lab, node: str, offset: int) -> int:
    return sum(r.get("direction") == "outbound" for r in access_logs.records(lab.log(node), offset))


def test_a_logging_change_reaches_every_worker(lab: Lab) -> None:
    """/logging is served by the leader; the follower, which takes about half the connections
    (N of them: all on the leader with P = 2**-39), takes the same levels: with access=off no
    worker logs a connection, after ?reset every one is logged again."""
    netns = lab.plan.node("node1").netns

    def post(query: str) -> str:
        status, body = runner.http_request(netns, runner.ADMIN_PORT, "POST", f"/logging?{query}")
        assert status == 200, body
        return body

    assert "zt.access: off" in post("level=access=off")
    try:
        time.sleep(0.5)  # the control channel's round trip to the follower
        offset = lab.offsets()["node1"]
        assert outbound_echoes(lab, N) == N
        time.sleep(0.5)  # the log writer thread's queue
        assert outbound_records(lab, "node1", offset) == 0
    finally:
        post("reset")
    time.sleep(0.5)
    offset = lab.offsets()["node1"]
    assert outbound_echoes(lab, N) == N
    assert wait_until(lambda: outbound_records(lab, "node1", offset) == N, 10.0)


DENY_APP_PORT = {
    "name": "deny-app-port",
    "namespace": "lab",
    "scope": "Namespace",
    "action": "Deny",
    "rules": [[[{"destinationPorts": [mesh.APP_PORT]}]]],
}


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(0.3)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.sendall(b"ping")
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_a_new_deny_is_enforced_by_both_workers(lab: Lab) -> None:
    """Live plaintext connections to pod2-1 (each a new lookup on its :15006 group, so both of
    node2's workers hold some) are all closed by a new DENY; new ones are all refused."""
    plain, b = mesh.tcp_pod(lab.plan), lab.pod("pod2-1")
    before = per_worker(lab, "node2", "inbound")
    live = [connect_only(plain.netns, str(b.ipv4), mesh.APP_PORT) for _ in range(16)]
    original = lab.state.config.read_text()
    try:
        for sock in live:
            sock.settimeout(5)
            sock.sendall(b"live")
            assert sock.recv(4) == b"live"
        held = grew(before, per_worker(lab, "node2", "inbound"))
        assert sum(held) == 16 and min(held) > 0, f"live connections by worker: {held}"
        doc = yaml.safe_load(original)
        doc["policies"].append(DENY_APP_PORT)
        lab.write_config(yaml.safe_dump(doc, sort_keys=False))
        survivors = [i for i, sock in enumerate(live) if not closed_within(sock, 10)]
        assert survivors == [], f"connections {survivors} survived the DENY"
        start = per_worker(lab, "node2", "inbound")
        through = [
            exchange(plain.netns, str(b.ipv4), mesh.APP_PORT, b"after", timeout=3).echoed
            for _ in range(20)
        ]
        assert not any(through), "a worker let a denied connection through"
        denied = grew(start, per_worker(lab, "node2", "inbound"))
        assert sum(denied) == 20 and min(denied) > 0, f"denied by worker: {denied}"
        # a follower publishes what it computes at scrape time (revoked...) every second
        assert wait_until(
            lambda: metric(lab.metrics("node2"), "zt_policy_revoked_connections_total") >= 16, 5
        )
    finally:
        for sock in live:
            sock.close()
        lab.write_config(original)
    assert wait_until(lambda: exchange(plain.netns, str(b.ipv4), mesh.APP_PORT, b"x").echoed)
    assert wait_until(lambda: outbound_echoes(lab, 5) == 5), logs(lab)


def test_pod_api_add_answers_once_every_worker_listens(lab: Lab) -> None:
    uid, b2, plain = "lab/pod2-2", lab.pod("pod2-2"), mesh.tcp_pod(lab.plan)
    removed = pod_api(lab, "node2", "remove", uid)
    assert removed.returncode == 0, removed.stderr
    assert [uid in pods for pods in serving(lab, "node2")] == [False]
    added = pod_api(lab, "node2", "add", uid, "--netns", b2.netns)
    assert added.returncode == 0, added.stderr
    # no waiting: when `zt pod add` returned, the follower listened too
    assert [uid in pods for pods in serving(lab, "node2")] == [True]
    before = per_worker(lab, "node2", "inbound")
    echoed = [
        exchange(plain.netns, str(b2.ipv4), mesh.APP_PORT, b"re-added", timeout=5).echoed
        for _ in range(20)
    ]
    assert all(echoed), echoed
    spread = grew(before, per_worker(lab, "node2", "inbound"))
    assert sum(spread) == 20 and min(spread) > 0, f"re-added pod by worker: {spread}"


def test_a_killed_follower_is_restarted_and_service_continues(lab: Lab) -> None:
    (pid,) = followers(lab, "node1")
    assert outbound_echoes(lab, 20) == 20  # the follower has counted some
    restarts = metric(lab.metrics("node1"), "zt_worker_restarts_total")
    counted = per_worker(lab, "node1", "outbound")
    assert counted[1] > 0
    opened = metric(lab.metrics("node1"), "istio_tcp_connections_opened_total")
    shared = _metrics_dir(pid)
    assert (shared / f"counter_{pid}.db").exists()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not runner.alive(pid), 10)
    # the group shrank to the leader's sockets: everything still answered
    assert outbound_echoes(lab, 10) == 10, logs(lab)
    assert wait_until(lambda: followers(lab, "node1") not in ([], [pid]) and ready(lab, "node1"))
    text = lab.metrics("node1")
    assert metric(text, "zt_worker_restarts_total") == restarts + 1
    # the dead follower's counters stay in the node's (scraped just before the kill), folded
    # into the leader's file of retired counters; its gauges left with it
    assert per_worker(lab, "node1", "outbound")[1] >= counted[1]
    assert metric(text, "istio_tcp_connections_opened_total") >= opened + 10
    assert not list(shared.glob(f"*_{pid}.db")) and (shared / "counter_retired.db").exists()
    before = per_worker(lab, "node1", "outbound")
    assert outbound_echoes(lab, N) == N
    spread = grew(before, per_worker(lab, "node1", "outbound"))
    assert min(spread) > 0, f"the restarted follower gets no connections: {spread}"


def test_a_hung_follower_is_killed_and_replaced(lab: Lab) -> None:
    """A stopped follower still holds its share of every group: the leader's heartbeat kills
    it (then restarts it); meanwhile /metrics answers at once (it reads the follower's shared
    files, never asks the follower) with the follower's last figures."""
    (pid,) = followers(lab, "node1")
    assert outbound_echoes(lab, 20) == 20  # the follower has counted some
    restarts = metric(lab.metrics("node1"), "zt_worker_restarts_total")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, text = runner.http_get(
            lab.plan.node("node1").netns, runner.METRICS_PORT, "/metrics", timeout=15
        )
        assert status == 200 and time.monotonic() - started < 5
        assert metric(text, "zt_worker_connections_total", worker="1") > 0  # its last figures
        assert wait_until(lambda: not runner.alive(pid), HEARTBEAT_EVERY + HEARTBEAT_TIMEOUT + 15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: followers(lab, "node1") not in ([], [pid]) and ready(lab, "node1"))
    assert metric(lab.metrics("node1"), "zt_worker_restarts_total") == restarts + 1
    assert outbound_echoes(lab, 10) == 10


def test_a_dead_leader_takes_its_followers_with_it(lab: Lab) -> None:
    """SIGKILL (no drain): PR_SET_PDEATHSIG / control EOF end the follower; a restarted node
    comes back with its workers."""
    leader, (follower,) = lab.pid("node1"), followers(lab, "node1")
    os.kill(leader, signal.SIGKILL)
    assert wait_until(lambda: not runner.alive(leader) and not runner.alive(follower), 20)
    lab.restart("node1")  # the lab state keeps --workers for the restart
    assert wait_until(lambda: len(followers(lab, "node1")) == 1 and ready(lab, "node1"))
    assert outbound_echoes(lab, 5) == 5


def test_sigterm_to_the_leader_drains_every_worker_and_leaves_nothing(lab: Lab) -> None:
    """Live connections held by both workers keep every byte through the drain; then the
    leader and its follower are gone and nothing of node2 is left running."""
    plain, b = mesh.tcp_pod(lab.plan), lab.pod("pod2-1")
    leader, workers = lab.pid("node2"), followers(lab, "node2")
    netns = lab.plan.node("node2").netns
    before = per_worker(lab, "node2", "inbound")
    live = [connect_only(plain.netns, str(b.ipv4), mesh.APP_PORT) for _ in range(8)]
    try:
        for sock in live:
            sock.settimeout(5)
            sock.sendall(b"pre")
            assert sock.recv(3) == b"pre"
        held = grew(before, per_worker(lab, "node2", "inbound"))
        assert min(held) > 0, f"live connections by worker: {held}"
        os.kill(leader, signal.SIGTERM)  # the leader alone, not its process group
        time.sleep(0.5)  # draining now
        for i, sock in enumerate(live):
            sock.sendall(b"during-drain-%d" % i)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while data := sock.recv(100):
                got += data
            assert got == b"during-drain-%d" % i, f"connection {i} lost bytes in the drain"
    finally:
        for sock in live:
            sock.close()
    assert wait_until(lambda: not any(runner.alive(p) for p in (leader, *workers)), 30), (
        runner.tail(lab.log("node2"))
    )
    assert control.processes_in([netns]) == [], "a process of node2 outlived its leader"
    log = lab.log("node2").read_text()
    assert "[worker 1] worker 1 stopped" in log
    assert "restarting" not in log.split("draining")[-1]


def test_the_leader_alone_answers_each_pods_dns(lab: Lab) -> None:
    """With workers, one DNS proxy per pod (the leader's, zt/node/dns.py): dig in a pod gets the
    service VIP, and only the leader's families count it."""
    before = metric(lab.metrics("node1"), "zt_dns_requests_total", result="mesh")
    cmd = ["ip", "netns", "exec", lab.pod("pod1-1").netns, "dig", "+short", "+tries=1",
           "+time=3", mesh.SERVICE_HOST, "A"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert done.stdout.split() == [mesh.SERVICE_VIP4], done.stderr
    assert metric(lab.metrics("node1"), "zt_dns_requests_total", result="mesh") == before + 1
