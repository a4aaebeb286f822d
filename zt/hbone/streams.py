"""The stream state table: which side ended, who reset, what is still unacknowledged.

RFC 9113 §5.1: "half-closed (local): A stream that is in the 'half-closed (local)' state cannot be
used for sending frames [...]"; "half-closed (remote): [...] the peer has finished sending".
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass


class StreamState(enum.Enum):
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half_closed_local"
    HALF_CLOSED_REMOTE = "half_closed_remote"
    CLOSED = "closed"
    RESET = "reset"


@dataclass(slots=True)
class StreamRecord:
    """Mutable bookkeeping of one stream, private to the connection state machine."""

    stream_id: int
    local_ended: bool = False
    remote_ended: bool = False
    reset_code: int | None = None
    # Client: the CONNECT status once answered; server: the status we sent.
    status: int | None = None
    # Flow-controlled bytes handed to the adapter and not yet acknowledged.
    unacked: int = 0

    @property
    def refused(self) -> bool:
        """A non-200 answer: the tunnel never came up."""
        return self.status is not None and self.status != 200

    @property
    def state(self) -> StreamState:
        if self.reset_code is not None:
            return StreamState.RESET
        if self.local_ended and self.remote_ended:
            return StreamState.CLOSED
        if self.local_ended:
            return StreamState.HALF_CLOSED_LOCAL
        if self.remote_ended:
            return StreamState.HALF_CLOSED_REMOTE
        return StreamState.OPEN

    @property
    def finished(self) -> bool:
        # `state in (CLOSED, RESET)`, without building the state: called per live stream.
        return self.reset_code is not None or (self.local_ended and self.remote_ended)


class StreamTable:
    """Live streams plus a bounded memory of finished ones (so late queries answer CLOSED/RESET)."""

    def __init__(self, remember: int = 1024) -> None:
        self._live: dict[int, StreamRecord] = {}
        self._finished: OrderedDict[int, StreamState] = OrderedDict()
        self._remember = remember

    def add(self, stream_id: int) -> StreamRecord:
        record = StreamRecord(stream_id)
        self._live[stream_id] = record
        return record

    def get(self, stream_id: int) -> StreamRecord | None:
        return self._live.get(stream_id)

    def live(self) -> list[StreamRecord]:
        return list(self._live.values())

    def active(self) -> int:
        """Streams not yet closed or reset (what counts against concurrency limits)."""
        return sum(1 for record in self._live.values() if not record.finished)

    def any_active(self) -> bool:
        """`active() > 0` without counting: once per receive_data call, so O(1) when busy."""
        return any(not record.finished for record in self._live.values())

    def retire_if_finished(self, record: StreamRecord) -> bool:
        """Forget a finished, fully acknowledged stream; True when it was retired now.

        A CLOSED stream stays while the adapter still owes acknowledgements: its bytes still count
        against the connection window until the local socket took them.
        """
        if not record.finished or record.unacked or record.stream_id not in self._live:
            return False
        del self._live[record.stream_id]
        self._finished[record.stream_id] = record.state
        if len(self._finished) > self._remember:
            self._finished.popitem(last=False)
        return True

    def state(self, stream_id: int) -> StreamState | None:
        record = self._live.get(stream_id)
        if record is not None:
            return record.state
        return self._finished.get(stream_id)
