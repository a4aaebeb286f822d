"""Micro-benchmark of the inbound DATA fast path (not a test): CPU seconds per GB received.

    .venv/bin/python -m bench.hbone_inbound [MiB per run] [rounds]

A server core sends DATA to a client core; only the client's `receive_data` + `acknowledge` are
timed (`time.process_time`), with the fast path on and off in the same process, interleaved in
alternating order, for 16 KiB and 1 MiB frames, the wire cut into 256 KiB chunks (uvloop's TLS
read size) and into 16 KiB chunks (one TLS record each). Prints medians and the off/on ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

from tests.unit.hbone.pair import Pair
from zt.hbone import HboneSettings
from zt.hbone.events import DataReceived
from zt.hbone.settings import KiB, MiB


def run(fast: bool, frame_size: int, chunk: int, total: int) -> float:
    """CPU seconds per GB for the client core receiving `total` bytes."""
    settings = HboneSettings(
        max_frame_size=frame_size, ping_interval=None, idle_timeout=None, inbound_fast_path=fast
    )
    pair = Pair(client_settings=settings, server_settings=settings)
    sid = pair.tunnel()
    blob = bytes(4 * MiB)
    got = 0
    cpu = 0.0
    while got < total:
        pair.server.send_data(sid, blob)
        wire = pair.server.data_to_send()
        pieces = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
        start = time.process_time()
        for piece in pieces:
            for event in pair.client.receive_data(piece, 0.0):
                if isinstance(event, DataReceived):
                    got += event.flow_controlled_length
                    pair.client.acknowledge(sid, event.flow_controlled_length)
        cpu += time.process_time() - start
        pair.server.receive_data(pair.client.data_to_send(), 0.0)
    return cpu / (got / 1e9)


def main() -> None:
    total = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 256 * MiB
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for frame_size in (16 * KiB, 1 * MiB):
        for chunk in (256 * KiB, 16 * KiB):
            on: list[float] = []
            off: list[float] = []
            for round_ in range(rounds):
                order = (True, False) if round_ % 2 == 0 else (False, True)
                for fast in order:
                    (on if fast else off).append(run(fast, frame_size, chunk, total))
            m_on, m_off = statistics.median(on), statistics.median(off)
            print(
                f"frames {frame_size // KiB:>5} KiB, chunks {chunk // KiB:>3} KiB: "
                f"fast path on {m_on:.3f} ({min(on):.3f}..{max(on):.3f}) CPU s/GB, "
                f"off {m_off:.3f} ({min(off):.3f}..{max(off):.3f}), off/on x{m_off / m_on:.2f}"
            )


if __name__ == "__main__":
    main()
