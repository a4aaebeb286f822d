"""Paired connections: a client core and a server core wired back to back, no sockets."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from zt.addr import SocketAddr
from zt.hbone import ConnectRequest, HboneConnection, HboneSettings
from zt.hbone.events import ConnectRequested, Event

V4 = ipaddress.IPv4Address("10.1.2.3")


def request(port: int = 8080) -> ConnectRequest:
    return ConnectRequest(SocketAddr(V4, port))


@dataclass
class Pair:
    """Moves bytes between the two cores until both are quiet; collects each side's events."""

    now: float = 0.0
    client_settings: HboneSettings = field(default_factory=HboneSettings)
    server_settings: HboneSettings = field(default_factory=HboneSettings)
    client: HboneConnection = field(init=False)
    server: HboneConnection = field(init=False)
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    wire_to_server: list[bytes] = field(default_factory=list)
    wire_to_client: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = HboneConnection("client", now=self.now, settings=self.client_settings)
        self.server = HboneConnection("server", now=self.now, settings=self.server_settings)
        self.pump()
        self.take_client()
        self.take_server()

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.wire_to_server.append(to_server)
                self.server_events += self.server.receive_data(to_server, self.now)
            if to_client:
                self.wire_to_client.append(to_client)
                self.client_events += self.client.receive_data(to_client, self.now)
        raise AssertionError("connections never went quiet")

    def take_client(self) -> list[Event]:
        events, self.client_events = self.client_events, []
        return events

    def take_server(self) -> list[Event]:
        events, self.server_events = self.server_events, []
        return events

    def tunnel(self, port: int = 8080) -> int:
        """Open a stream and answer 200; returns the stream id with both event lists drained."""
        stream_id = self.client.open_stream(request(port))
        self.pump()
        assert ConnectRequested(stream_id, request(port)) in self.take_server()
        self.server.respond(stream_id, 200)
        self.pump()
        self.take_client()
        return stream_id
