"""Held DATA payloads (zt/hbone/_h2.py `HeldPayload`, `HboneConnection.send_held`): h2 counts a
payload it never sees, and the output puts it exactly where its bytes belong on the wire."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame

from tests.unit.hbone.frames import of_type
from tests.unit.hbone.pair import Pair
from zt.hbone import HeldPayload
from zt.hbone.errors import HboneUsageError
from zt.hbone.events import DataReceived


def _wire(chunks: list[bytes | memoryview | HeldPayload], payloads: dict[int, bytes]) -> bytes:
    """What the transport sends: each held payload replaced by the bytes its source holds."""
    out = b""
    for chunk in chunks:
        out += payloads[id(chunk.source)] if isinstance(chunk, HeldPayload) else bytes(chunk)
    return out


def test_held_frame_is_a_header_then_the_payload_and_the_peer_gets_the_bytes() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    window = pair.client.send_window(stream_id)
    source = object()
    payload = bytes(range(256)) * 64  # 16 KiB
    pair.client.send_data(stream_id, b"early")  # bytes queued before keep their place
    pair.client.send_held(stream_id, HeldPayload(len(payload), source))
    chunks = pair.client.output()
    header, held = chunks[-2], chunks[-1]
    assert isinstance(held, HeldPayload) and held.source is source
    assert not isinstance(header, HeldPayload)
    assert bytes(header)[-9:-6] == len(payload).to_bytes(3, "big")  # RFC 9113 §4.1 length
    assert pair.client.send_window(stream_id) == window - len(b"early") - len(payload)
    wire = _wire(chunks, {id(source): payload})
    frames = of_type([wire], DataFrame)
    assert [f.data for f in frames] == [b"early", payload]
    events = pair.server.receive_data(wire, pair.now)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == (
        b"early" + payload
    )


def test_held_frame_must_fit_the_window_and_the_frame_size() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    too_big = pair.client.max_outbound_frame_size + 1
    for size in (0, too_big):
        with pytest.raises(HboneUsageError, match="send_held: got"):
            pair.client.send_held(stream_id, HeldPayload(size, None))
    assert pair.client.output() == []


def test_bytes_only_readers_refuse_held_output() -> None:
    pair = Pair()
    stream_id = pair.tunnel()
    pair.client.send_held(stream_id, HeldPayload(10, None))
    with pytest.raises(HboneUsageError, match="held payloads queued"):
        pair.client.data_to_send()
