"""Hypothesis state machine over a client core ↔ server core pair driven by random API calls.

Invariants: bytes arrive complete and in order per direction; END_STREAM comes after the last byte;
nothing but documented HboneErrors is raised; stream counts never exceed the limits.
"""

from __future__ import annotations

import dataclasses
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.unit.hbone.pair import Pair, request
from zt.hbone import HboneSettings, StreamState
from zt.hbone.errors import ConnectionFull, StreamNotWritable
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    ConnectResponded,
    DataReceived,
    Event,
    StreamEnded,
    StreamReset,
)

SMALL = HboneSettings(
    stream_window=65_535,
    connection_window=200_000,
    max_frame_size=16_384,
    client_max_streams=4,
    server_max_streams=6,
    ping_interval=None,
    idle_timeout=None,
)


class Side:
    """What one side sent and what the other side saw, per stream."""

    def __init__(self) -> None:
        self.sent: dict[int, bytearray] = {}
        self.got: dict[int, bytearray] = {}
        self.ended_sent: set[int] = set()
        self.ended_got: set[int] = set()
        self.reset: set[int] = set()


class PairMachine(RuleBasedStateMachine):
    client_settings = SMALL
    server_settings = SMALL

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(client_settings=self.client_settings, server_settings=self.server_settings)
        self.up = Side()  # client → server
        self.down = Side()  # server → client
        self.answered: dict[int, int] = {}
        self.requested: list[int] = []
        self.server_seen: set[int] = set()

    @initialize()
    def start(self) -> None:
        assert not self.pair.client.closed

    def _absorb(self, events: list[Event], side: Side, unacked: dict[int, int] | None) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                assert event.stream_id not in side.ended_got, "data after END_STREAM"
                side.got.setdefault(event.stream_id, bytearray()).extend(event.data)
            elif isinstance(event, StreamEnded):
                side.ended_got.add(event.stream_id)
            elif isinstance(event, StreamReset):
                side.reset.add(event.stream_id)
            elif isinstance(event, ConnectRequested):
                self.requested.append(event.stream_id)
                self.server_seen.add(event.stream_id)
            elif isinstance(event, ConnectResponded):
                self.answered[event.stream_id] = event.status
            assert not isinstance(event, ConnectionTerminated), event
        del unacked

    @rule()
    def pump(self) -> None:
        self.pair.pump(rounds=200)
        self._absorb(self.pair.take_server(), self.up, None)
        self._absorb(self.pair.take_client(), self.down, None)

    @rule()
    def open(self) -> None:
        try:
            sid = self.pair.client.open_stream(request())
        except ConnectionFull:
            assert self.pair.client.open_streams >= SMALL.client_max_streams
            return
        self.up.sent[sid] = bytearray()

    @precondition(lambda self: bool(self.requested))
    @rule(index=st.integers(0, 50), ok=st.booleans())
    def respond(self, index: int, ok: bool) -> None:
        sid = self.requested.pop(index % len(self.requested))
        self.pair.server.respond(sid, 200 if ok else 503)
        if ok:
            self.down.sent[sid] = bytearray()

    @rule(
        upward=st.booleans(),
        pick=st.integers(0, 50),
        size=st.integers(0, 100_000),
        end=st.booleans(),
    )
    def send(self, upward: bool, pick: int, size: int, end: bool) -> None:
        side = self.up if upward else self.down
        conn = self.pair.client if upward else self.pair.server
        streams = sorted(side.sent)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        payload = bytes((sid + i) % 251 for i in range(size))
        try:
            accepted = conn.send_data(sid, payload, end_stream=end)
        except StreamNotWritable:
            assert conn.stream_state(sid) is not StreamState.OPEN or (
                conn is self.pair.client and self.answered.get(sid, 200) != 200
            )
            return
        assert 0 <= accepted <= size
        side.sent[sid].extend(payload[:accepted])
        if end and accepted == size:
            side.ended_sent.add(sid)

    @rule(upward=st.booleans(), pick=st.integers(0, 50), fraction=st.floats(0, 1))
    def acknowledge(self, upward: bool, pick: int, fraction: float) -> None:
        # The receiving side's adapter wrote part of what it holds.
        side = self.up if upward else self.down
        conn = self.pair.server if upward else self.pair.client
        streams = sorted(side.got)
        if not streams:
            return
        sid = streams[pick % len(streams)]
        conn.acknowledge(sid, int(len(side.got[sid]) * fraction))

    @rule(client=st.booleans(), pick=st.integers(0, 50))
    def reset(self, client: bool, pick: int) -> None:
        conn = self.pair.client if client else self.pair.server
        streams = sorted(self.up.sent if client else self.server_seen)
        if streams:
            sid = streams[pick % len(streams)]
            conn.reset_stream(sid)
            (self.up if client else self.down).reset.add(sid)

    @invariant()
    def bytes_arrive_in_order(self) -> None:
        for side in (self.up, self.down):
            for sid, got in side.got.items():
                sent = side.sent.get(sid, bytearray())
                assert bytes(got) == bytes(sent[: len(got)]), f"stream {sid} corrupted"
            for sid in side.ended_got:
                if sid not in side.reset:
                    assert side.got.get(sid, bytearray()) == side.sent.get(sid, bytearray())

    @invariant()
    def limits_hold(self) -> None:
        assert self.pair.client.open_streams <= SMALL.client_max_streams
        assert self.pair.server.open_streams <= SMALL.server_max_streams


class MixedPairMachine(PairMachine):
    """The same model with the inbound DATA fast path on the client only (zt/hbone/_inbound.py):
    a fast-path core and a plain-h2 core must interoperate exactly."""

    server_settings = dataclasses.replace(SMALL, inbound_fast_path=False)


MACHINE_SETTINGS = settings(
    max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
PairMachine.TestCase.settings = MACHINE_SETTINGS
MixedPairMachine.TestCase.settings = MACHINE_SETTINGS
TestPairMachine = PairMachine.TestCase
TestMixedPairMachine = MixedPairMachine.TestCase
