"""Micro-benchmark of the sans-IO core (not a test): DATA through a client/server core pair.

    .venv/bin/python -m tests.unit.hbone.bench_core

Prints MB/s with zt's constant-time DATA repr and with hyperframe's original one (docs/design.md §2:
h2 repr()s every received frame), for 1 MiB and 16 KiB frames, three interleaved rounds.
"""

from __future__ import annotations

import time

from hyperframe.frame import DataFrame

from tests.unit.hbone.pair import Pair
from zt.hbone import HboneSettings
from zt.hbone.events import DataReceived
from zt.hbone.settings import MiB

CHEAP_REPR = DataFrame.__dict__["_body_repr"]


def run(frame_size: int, total: int = 256 * MiB) -> tuple[float, float]:
    """(end-to-end MB/s, receive_data-only MB/s) for `total` bytes server → client."""
    settings = HboneSettings(max_frame_size=frame_size, ping_interval=None, idle_timeout=None)
    pair = Pair(client_settings=settings, server_settings=settings)
    sid = pair.tunnel()
    blob = memoryview(bytes(4 * MiB))
    got = 0
    receiving = 0.0
    start = time.perf_counter()
    while got < total:
        pair.server.send_data(sid, blob)
        wire = pair.server.data_to_send()
        t = time.perf_counter()
        events = pair.client.receive_data(wire, 0.0)
        receiving += time.perf_counter() - t
        for event in events:
            if isinstance(event, DataReceived):
                got += event.flow_controlled_length
                pair.client.acknowledge(sid, event.flow_controlled_length)
        pair.server.receive_data(pair.client.data_to_send(), 0.0)
    elapsed = time.perf_counter() - start
    return got / elapsed / 1e6, got / receiving / 1e6


def main() -> None:
    for frame_size in (1 * MiB, 16 * 1024):
        for round_ in range(3):
            setattr(DataFrame, "_body_repr", CHEAP_REPR)  # noqa: B010
            cheap = run(frame_size)
            delattr(DataFrame, "_body_repr")  # back to hyperframe's hex-encoding Frame._body_repr
            original = run(frame_size)
            setattr(DataFrame, "_body_repr", CHEAP_REPR)  # noqa: B010
            print(
                f"frame {frame_size // 1024:>4} KiB round {round_}: end-to-end "
                f"{cheap[0]:6.0f} vs {original[0]:6.0f} MB/s (x{cheap[0] / original[0]:.2f}), "
                f"receive_data {cheap[1]:6.0f} vs {original[1]:6.0f} MB/s "
                f"(x{cheap[1] / original[1]:.2f})"
            )


if __name__ == "__main__":
    main()
