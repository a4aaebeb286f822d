"""Worker processes, the pure parts: options, the shared registry, the control channel."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zt.errors import UsageError
from zt.node.control import Channel, WorkerChannelError, WorkerRequestFailed, decode
from zt.node.options import BadWorkerCount, NodeOptions, dns_upstream
from zt.node.workers import WorkerSupervisor
from zt.telemetry.metrics import MetricsModeError, Registry


def test_a_supervisor_needs_the_shared_registry() -> None:
    """Followers write into the leader's multiprocess directory: a private registry would leave
    their counts where no scrape reads, so the supervisor refuses it."""
    options = NodeOptions(config=Path("m.yaml"), node="n", workers=2)
    with pytest.raises(MetricsModeError, match=r"registry: got a private one, expected Registry"):
        WorkerSupervisor(options, Registry(), desired=dict, changed=lambda: None)


def test_workers_need_a_pinned_capture_and_a_sane_count() -> None:
    with pytest.raises(BadWorkerCount, match="--no-pin"):
        NodeOptions(config=Path("m.yaml"), node="n", pin_dir=None, workers=2)
    with pytest.raises(BadWorkerCount, match=r"got 0, expected 1\.\.64"):
        NodeOptions(config=Path("m.yaml"), node="n", workers=0)
    assert NodeOptions(config=Path("m.yaml"), node="n", pin_dir=None).workers == 1


def test_ktls_setting_is_checked() -> None:
    with pytest.raises(UsageError, match=r"--ktls: got 'yes', expected one of auto, on, off"):
        NodeOptions(config=Path("m.yaml"), node="n", ktls="yes")


def test_follower_options_round_trip() -> None:
    opts = NodeOptions(config=Path("/m.yaml"), node="n1", capture="sklookup", workers=3,
                       drain_deadline=2.5, socks5=True, ktls="on", original_source=False,
                       dns_upstreams=(dns_upstream("[fd00::a]:5353"), dns_upstream("10.0.0.2")))  # fmt: skip
    back = NodeOptions.from_follower_json(opts.follower_json())
    for name in ("config", "node", "ca_dir", "capture", "pin_dir", "drain_deadline", "socks5",
                 "workers", "log_format", "trust_domain", "config_poll", "ktls", "dns",
                 "dns_upstreams", "original_source"):  # fmt: skip
        assert getattr(back, name) == getattr(opts, name), name
    with pytest.raises(UsageError, match="capture"):
        NodeOptions.from_follower_json(opts.follower_json().replace("sklookup", "iptables"))


def test_decode_names_what_it_got() -> None:
    with pytest.raises(WorkerChannelError, match="expected JSON"):
        decode(b"{nope\n")
    with pytest.raises(WorkerChannelError, match="expected a JSON object"):
        decode(b"[1]\n")


async def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    return Channel(ra, wa), Channel(rb, wb)


def test_requests_are_answered_concurrently_and_errors_travel_as_types() -> None:
    async def run() -> None:
        leader, follower = await _pair()
        release = asyncio.Event()

        async def handle(msg: dict[str, object]) -> dict[str, object]:
            if msg["op"] == "sync":
                await release.wait()  # a slow pod sync must not hold up a heartbeat
                return {"serving": sorted(msg["pods"])}  # type: ignore[call-overload]
            if msg["op"] == "ping":
                return {"pong": 1}
            raise BadWorkerCount("op: got nonsense")

        serving = asyncio.ensure_future(follower.serve(handle))
        dispatch = asyncio.ensure_future(leader.dispatch())
        sync = asyncio.ensure_future(leader.request("sync", 5, pods={"b": "n", "a": "n"}))
        assert (await leader.request("ping", 5))["pong"] == 1
        assert not sync.done()
        release.set()
        assert (await sync)["serving"] == ["a", "b"]
        with pytest.raises(WorkerRequestFailed, match="nonsense"):
            await leader.request("bogus", 5)
        follower.close()  # the follower goes: whoever waits learns it
        await serving
        with pytest.raises(WorkerChannelError):
            await leader.request("ping", 5)
        await dispatch
        leader.close()

    asyncio.run(asyncio.wait_for(run(), 20))


def test_a_silent_follower_times_out() -> None:
    async def run() -> None:
        leader, follower = await _pair()
        dispatch = asyncio.ensure_future(leader.dispatch())
        with pytest.raises(WorkerChannelError, match=r"no answer within 0\.2 s"):
            await leader.request("ping", 0.2)
        follower.close()
        await dispatch
        leader.close()

    asyncio.run(asyncio.wait_for(run(), 20))


def test_hello_is_a_plain_message() -> None:
    async def run() -> None:
        leader, follower = await _pair()
        await follower.send({"op": "hello", "worker": 1, "pid": 7})
        assert await leader.receive() == {"op": "hello", "worker": 1, "pid": 7}
        follower.close()
        assert await leader.receive() is None
        leader.close()

    asyncio.run(asyncio.wait_for(run(), 20))
    assert json.loads(b'{"a":1}') == {"a": 1}


def test_messages_that_answer_nothing_are_events() -> None:
    async def run() -> list[dict[str, object]]:
        leader, follower = await _pair()
        events: list[dict[str, object]] = []
        dispatch = asyncio.ensure_future(leader.dispatch(events.append))
        await follower.send({"op": "config_changed"})
        await follower.send({"id": 99, "ok": True})  # an answer nobody waits for: dropped
        follower.close()
        await dispatch
        leader.close()
        return events

    assert asyncio.run(asyncio.wait_for(run(), 20)) == [{"op": "config_changed"}]


def test_zt_run_refuses_workers_without_pins(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("workloads: []\n")
    zt = Path(sys.executable).with_name("zt")
    done = subprocess.run(
        [str(zt), "run", "--config", str(mesh), "--node", "n", "--no-pin", "--workers", "2"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--workers: got 2 with --no-pin, expected 1" in done.stderr


def test_dns_flags_are_checked(tmp_path: Path) -> None:
    """`--dns-upstream` takes IP[:PORT] and only with the DNS proxy on; each refusal names the
    flag, the value and what was expected (through `zt run`: one line, before any BPF)."""
    with pytest.raises(UsageError, match=r"--dns-upstream: got .10\.0\.0\.2:0., expected an IP"):
        dns_upstream("10.0.0.2:0")
    with pytest.raises(
        UsageError, match=r"got 10\.0\.0\.2:53 with --no-dns, expected it only with"
    ):
        NodeOptions(config=Path("m.yaml"), node="n", dns=False,
                    dns_upstreams=(dns_upstream("10.0.0.2"),))  # fmt: skip
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("workloads: []\n")
    zt = Path(sys.executable).with_name("zt")
    done = subprocess.run(
        [str(zt), "run", "--config", str(mesh), "--node", "n", "--dns-upstream", "dns.example"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--dns-upstream: got 'dns.example', expected an IP address" in done.stderr
