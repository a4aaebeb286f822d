"""Worker processes, the pure parts: merging expositions, options, the control channel."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.node.lab import metric
from zt.errors import UsageError
from zt.node import metricsmerge
from zt.node.control import Channel, WorkerChannelError, WorkerRequestFailed, decode
from zt.node.options import BadWorkerCount, NodeOptions
from zt.telemetry.metrics import TCP_LABELS, Registry


def _worker_registry(worker: int, opened: int) -> Registry:
    registry = Registry()
    counter = registry.counter("istio_tcp_connections_opened_total", "opened", TCP_LABELS)
    counter.inc(opened, {"reporter": "destination", "destination_workload": 'a "quoted" } pod'})
    accepted = registry.counter("zt_worker_connections_total", "by worker", ("worker", "listener"))
    accepted.inc(opened, {"worker": str(worker), "listener": "hbone"})
    live = registry.gauge("zt_live_inbound_connections", "live")
    live.set(worker + 1)
    return registry


def test_merge_sums_equal_series_and_keeps_per_worker_series_apart() -> None:
    texts = [_worker_registry(0, 3).render(), _worker_registry(1, 4).render()]
    merged = metricsmerge.merge_expositions(texts)
    opened = metricsmerge.parse(merged)["istio_tcp_connections_opened_total"].samples
    assert list(opened.values()) == [7]  # one series, its label value holding `"` and `}`
    assert 'destination_workload="a \\"quoted\\" } pod"' in next(iter(opened))
    assert metric(merged, "zt_worker_connections_total", worker="0") == 3
    assert metric(merged, "zt_worker_connections_total", worker="1") == 4
    assert metric(merged, "zt_live_inbound_connections") == 3
    # one HELP/TYPE per family, one line per series: a valid exposition
    assert merged.count("# TYPE istio_tcp_connections_opened_total counter") == 1
    assert merged.count("istio_tcp_connections_opened_total{") == 1


def test_merge_is_stable_under_reparsing() -> None:
    text = metricsmerge.merge_expositions([_worker_registry(0, 2).render()])
    assert metricsmerge.merge_expositions([text]) == text
    assert metricsmerge.parse(text)["zt_live_inbound_connections"].kind == "gauge"


def test_counters_of_drops_gauges_so_a_dead_worker_leaves_only_counters() -> None:
    retired = metricsmerge.counters_of(_worker_registry(1, 5).render())
    assert metric(retired, "zt_worker_connections_total", worker="1") == 5
    assert "zt_live_inbound_connections" not in retired


def test_malformed_lines_are_skipped() -> None:
    families = metricsmerge.parse('garbage\nx{a="1"} notanumber\ny 2\n# TYPE\n')
    assert list(families) == ["y"] and families["y"].samples == {"": 2.0}


def test_workers_need_a_pinned_capture_and_a_sane_count() -> None:
    with pytest.raises(BadWorkerCount, match="--no-pin"):
        NodeOptions(config=Path("m.yaml"), node="n", pin_dir=None, workers=2)
    with pytest.raises(BadWorkerCount, match=r"got 0, expected 1\.\.64"):
        NodeOptions(config=Path("m.yaml"), node="n", workers=0)
    assert NodeOptions(config=Path("m.yaml"), node="n", pin_dir=None).workers == 1


def test_follower_options_round_trip() -> None:
    opts = NodeOptions(config=Path("/m.yaml"), node="n1", capture="sklookup", workers=3,
                       drain_deadline=2.5, socks5=True)  # fmt: skip
    back = NodeOptions.from_follower_json(opts.follower_json())
    for name in ("config", "node", "ca_dir", "capture", "pin_dir", "drain_deadline", "socks5",
                 "workers", "log_format", "trust_domain", "config_poll"):  # fmt: skip
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
                await release.wait()  # a slow pod sync must not hold up a scrape
                return {"serving": sorted(msg["pods"])}  # type: ignore[call-overload]
            if msg["op"] == "metrics":
                return {"text": "x 1\n"}
            raise BadWorkerCount("op: got nonsense")

        serving = asyncio.ensure_future(follower.serve(handle))
        dispatch = asyncio.ensure_future(leader.dispatch())
        sync = asyncio.ensure_future(leader.request("sync", 5, pods={"b": "n", "a": "n"}))
        assert (await leader.request("metrics", 5))["text"] == "x 1\n"
        assert not sync.done()
        release.set()
        assert (await sync)["serving"] == ["a", "b"]
        with pytest.raises(WorkerRequestFailed, match="nonsense"):
            await leader.request("bogus", 5)
        follower.close()  # the follower goes: whoever waits learns it
        await serving
        with pytest.raises(WorkerChannelError):
            await leader.request("metrics", 5)
        await dispatch
        leader.close()

    asyncio.run(asyncio.wait_for(run(), 20))


def test_a_silent_follower_times_out() -> None:
    async def run() -> None:
        leader, follower = await _pair()
        dispatch = asyncio.ensure_future(leader.dispatch())
        with pytest.raises(WorkerChannelError, match=r"no answer within 0\.2 s"):
            await leader.request("metrics", 0.2)
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
