"""The pure timer table and settings validation."""

from __future__ import annotations

import pytest

from zt.errors import UsageError
from zt.hbone import HboneSettings
from zt.hbone.settings import KiB, MiB
from zt.hbone.timers import TimerAction, Timers


def timers(**overrides: float | None) -> Timers:
    values: dict[str, float | None] = {
        "ping_interval": 10.0,
        "ping_timeout": 20.0,
        "idle_timeout": 300.0,
        "last_ping": 0.0,
        "idle_since": 0.0,
    }
    values.update(overrides)
    return Timers(**values)  # type: ignore[arg-type]


def test_defaults_are_ztunnels() -> None:
    settings = HboneSettings()
    assert (settings.stream_window, settings.connection_window) == (4 * MiB, 16 * MiB)
    assert settings.max_frame_size == 1 * MiB
    assert (settings.client_max_streams, settings.server_max_streams) == (100, 200)
    assert (settings.ping_interval, settings.ping_timeout, settings.idle_timeout) == (10, 20, 300)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_frame_size", 16 * KiB - 1),
        ("max_frame_size", 2**24),
        ("stream_window", 2**31),
        ("connection_window", 1000),
        ("client_max_streams", 0),
        ("ping_interval", 0.0),
        ("idle_timeout", -1.0),
        ("ping_timeout", 0.0),
    ],
)
def test_settings_refuse_out_of_range_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(UsageError) as info:
        HboneSettings(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert repr(value) in str(info.value)


def test_ping_cycle() -> None:
    t = timers(idle_since=None)
    assert t.next_deadline() == 10.0
    assert t.due(9.0) == []
    assert t.due(10.0) == [TimerAction.SEND_PING]
    opaque = t.ping_sent(10.0)
    assert t.next_deadline() == 30.0
    t.ping_acked(b"wrong!!!", 11.0)
    assert t.next_deadline() == 30.0  # only our PING's ACK counts
    t.ping_acked(opaque, 11.0)
    assert t.next_deadline() == 20.0
    t.ping_sent(20.0)
    assert t.due(40.0) == [TimerAction.PING_TIMEOUT]


def test_idle_runs_only_without_streams() -> None:
    t = timers(ping_interval=None)
    assert t.next_deadline() == 300.0
    t.streams_changed(1, 5.0)
    assert t.next_deadline() is None
    t.streams_changed(0, 50.0)
    t.streams_changed(0, 60.0)  # still idle since 50
    assert t.next_deadline() == 350.0
    assert t.due(350.0) == [TimerAction.IDLE_TIMEOUT]


def test_drain_deadline_first() -> None:
    t = timers(ping_interval=None, idle_timeout=None)
    t.drain_deadline = 7.0
    assert t.next_deadline() == 7.0
    assert t.due(7.0) == [TimerAction.DRAIN_DEADLINE]
