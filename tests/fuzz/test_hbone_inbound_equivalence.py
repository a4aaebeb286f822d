"""Hypothesis: the inbound DATA fast path changes nothing observable. The same random frame
sequences, cut into random chunks, go to a fast-path core and a plain-h2 core (`Twins`); after
every chunk both return equal events (payloads, flow-controlled lengths, resets, terminations with
their error codes and messages) and emit equal bytes (WINDOW_UPDATE, RST_STREAM, GOAWAY, ...)."""

from __future__ import annotations

import functools
import struct

import hpack
from hyperframe.frame import HeadersFrame, SettingsFrame
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.test_hbone_fuzz import CLIENT_START, FUZZ, OPENING, _chunks, _encode, frame_specs
from tests.unit.hbone.pair import request
from tests.unit.hbone.twins import Twins
from zt.hbone import HboneConnection, HboneSettings
from zt.hbone.events import DataReceived
from zt.hbone.settings import KiB

# Small windows and frames so that random DATA crosses them; the defaults as the other case.
SETTINGS = st.sampled_from(
    [
        HboneSettings(),
        HboneSettings(stream_window=65_535, connection_window=80_000, max_frame_size=16 * KiB),
    ]
)


def _raw_data(stream_id: int, size: int, flags: int, pad: int | None) -> tuple[str, bytes]:
    """A DATA frame as raw bytes: any flags, the reserved bit, padding valid or not."""
    body = bytes((stream_id + i) % 251 for i in range(size))
    if pad is not None:
        flags |= 0x8
        body = bytes([pad % 256]) + body + bytes(min(pad, size))
    n = len(body)
    return ("raw", struct.pack(">HBBBL", n >> 8, n & 0xFF, 0x0, flags, stream_id) + body)


data_specs = st.builds(
    _raw_data,
    st.sampled_from([1, 1, 1, 3, 3, 5, 0, 1 | 0x80000000]),
    st.one_of(st.integers(0, 64), st.integers(0, 20_000)),
    st.sampled_from([0x0, 0x0, 0x1, 0xF6, 0xFF]),
    st.one_of(st.none(), st.none(), st.integers(0, 300)),
)
# A HEADERS block left open, sometimes directly followed by DATA (which h2 must refuse).
open_blocks = st.builds(
    lambda sid, block, then: ("raw", HeadersFrame(sid, block).serialize() + then[1]),
    st.sampled_from([1, 3, 5]),
    st.sampled_from([b"", b"\x82", b"\x82\x84"]),
    st.one_of(st.just(("raw", b"")), data_specs),
)
specs = st.lists(st.one_of(data_specs, data_specs, frame_specs, open_blocks), max_size=14)
cuts = st.lists(st.integers(0, 120_000), max_size=8)


@FUZZ
@given(specs, cuts, st.booleans(), SETTINGS)
def test_server_fast_path_equals_h2(
    frames: list[tuple[object, ...]], cut: list[int], respond_ok: bool, settings: HboneSettings
) -> None:
    twins = Twins("server", settings)
    wire = CLIENT_START + _encode([*OPENING, *frames])
    twins.drive(_chunks(wire, cut), respond_ok)


@FUZZ
@given(specs, cuts, st.sampled_from([b"200", b"503"]), SETTINGS)
def test_client_fast_path_equals_h2(
    frames: list[tuple[object, ...]], cut: list[int], status: bytes, settings: HboneSettings
) -> None:
    twins = Twins("client", settings)
    for _ in range(2):  # streams 1 and 3
        twins.act(lambda c: c.open_stream(request()))
    twins.same_output()
    encoder = hpack.Encoder()
    responses = b"".join(
        HeadersFrame(sid, encoder.encode([(b":status", status)]), flags=["END_HEADERS"]).serialize()
        for sid in (1, 3)
    )
    # The client's HPACK decoder must see the responses' encoder state first; random HEADERS in
    # `frames` use their own encoder and mostly fail decoding, as in test_hbone_fuzz.
    wire = SettingsFrame(0).serialize() + responses + _encode(frames)
    twins.drive(_chunks(wire, cut))


@FUZZ
@given(
    st.lists(st.tuples(st.sampled_from([1, 3]), st.integers(0, 40_000), st.booleans()), max_size=8),
    cuts,
    st.lists(st.floats(0, 1), max_size=8),
)
def test_bulk_data_with_partial_acknowledgements(
    sends: list[tuple[int, int, bool]], cut: list[int], acks: list[float]
) -> None:
    """Valid bulk traffic (frames up to the limit, END_STREAM, windows nearly exhausted) with the
    adapter acknowledging only part of what it got: window updates must match exactly."""
    settings = HboneSettings(stream_window=65_535, connection_window=100_000)
    twins = Twins("server", settings)
    wire = CLIENT_START + _encode(
        [*OPENING, *(("raw", _raw_data(sid, n, int(end), None)[1]) for sid, n, end in sends)]
    )
    now = 0.0
    for index, chunk in enumerate(_chunks(wire, cut)):
        now += 1.0
        for event in twins.feed(chunk, now):
            if isinstance(event, DataReceived):
                part = int(event.flow_controlled_length * (acks[index % len(acks)] if acks else 1))
                twins.act(
                    functools.partial(
                        HboneConnection.acknowledge, stream_id=event.stream_id, n=part
                    )
                )
        twins.same_output()
