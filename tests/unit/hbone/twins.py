"""Twin cores: the same bytes and calls go to a core with the inbound DATA fast path and to one
where h2 parses every frame; after every step their events and emitted bytes must be equal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

from zt.hbone import HboneConnection, HboneSettings, StreamState
from zt.hbone._inbound import InboundBuffer
from zt.hbone.events import (
    ConnectionTerminated,
    ConnectRequested,
    DataReceived,
    Event,
    RequestRejected,
)

Normal = tuple[object, ...]


def normal(event: Event) -> Normal:
    """An event as comparable data (payload views as bytes, errors as type + message)."""
    if isinstance(event, DataReceived):
        return ("data", event.stream_id, bytes(event.data), event.flow_controlled_length)
    if isinstance(event, ConnectionTerminated):
        error = event.error
        return ("terminated", event.reason, event.error_code, type(error).__name__, str(error))
    if isinstance(event, RequestRejected):
        return ("rejected", event.stream_id, event.status, type(event.error).__name__)
    return (type(event).__name__, *dataclasses.astuple(event))


class Twins:
    def __init__(
        self, role: Literal["client", "server"], settings: HboneSettings | None = None
    ) -> None:
        base = settings or HboneSettings()
        self.fast = HboneConnection(
            role, now=0.0, settings=dataclasses.replace(base, inbound_fast_path=True)
        )
        self.plain = HboneConnection(
            role, now=0.0, settings=dataclasses.replace(base, inbound_fast_path=False)
        )
        assert isinstance(self.fast._h2.incoming_buffer, InboundBuffer)
        assert not isinstance(self.plain._h2.incoming_buffer, InboundBuffer)
        self.wire = self.same_output()

    def same_output(self) -> bytes:
        out = self.fast.data_to_send()
        assert out == self.plain.data_to_send()
        return out

    def feed(self, chunk: bytes, now: float = 0.0) -> list[Event]:
        """receive_data on both; returns the fast core's events (equal to the plain one's)."""
        events = self.fast.receive_data(chunk, now)
        assert [normal(e) for e in events] == [
            normal(e) for e in self.plain.receive_data(chunk, now)
        ]
        return events

    def act(self, call: Callable[[HboneConnection], object]) -> object:
        """The same API call on both: same result or same exception type and message."""
        results: list[object] = []
        for conn in (self.fast, self.plain):
            try:
                results.append(("ok", call(conn)))
            except Exception as exc:  # compared, not swallowed: both must raise alike
                results.append((type(exc).__name__, str(exc)))
        assert results[0] == results[1]
        return results[0]

    def drive(self, chunks: list[bytes], respond_ok: bool = True) -> list[Normal]:
        """Feed chunks like an adapter: answer CONNECTs, send a reply, acknowledge data, tick;
        compares events and emitted bytes after every step."""
        seen: list[Normal] = []
        now = 0.0
        for chunk in chunks:
            now += 1.0
            events = self.feed(chunk, now)
            timer = self.fast.on_timer(now)
            assert [normal(e) for e in timer] == [normal(e) for e in self.plain.on_timer(now)]
            for event in [*events, *timer]:
                seen.append(normal(event))
                self._react(event, respond_ok)
            self.same_output()
        return seen

    def _react(self, event: Event, respond_ok: bool) -> None:
        if isinstance(event, ConnectRequested):
            sid = event.stream_id
            self.act(lambda c: c.respond(sid, 200 if respond_ok else 503))
            if respond_ok and self.fast.stream_state(sid) is StreamState.OPEN:
                self.act(lambda c: c.send_data(sid, b"hello", end_stream=True))
        elif isinstance(event, DataReceived):
            sid, size = event.stream_id, event.flow_controlled_length
            self.act(lambda c: c.acknowledge(sid, size))
