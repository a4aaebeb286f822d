"""The pure timer table and settings validation."""

from __future__ import annotations

import pytest

from zt.errors import UsageError
from zt.hbone import HboneSettings
from zt.hbone.settings import KiB, MiB
from zt.hbone.timers import TimerAction, Timers


def timers(**overrides: object) -> Timers:
    values: dict[str, object] = {
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


def test_limit_defaults() -> None:
    settings = HboneSettings()
    assert settings.preface_timeout == 5.0
    assert settings.max_header_list_size == 64 * KiB  # also the header-block cap
    assert settings.max_pending_connects == 100
    assert settings.max_premature_resets_per_second == 100
    assert (settings.control_frames_per_second, settings.settings_per_second) == (1000, 10)
    assert settings.write_buffer_limit == 8 * MiB
    assert settings.max_frames_per_call == 256


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
        ("preface_timeout", 0.0),
        ("max_pending_connects", 0),
        ("max_premature_resets_per_second", 0.5),
        ("control_frames_per_second", 0.0),
        ("settings_per_second", -1.0),
        ("write_buffer_limit", 1024),
        ("max_frames_per_call", 0),
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


def test_ping_payloads_come_from_the_injected_randomness_and_acks_must_echo_them() -> None:
    draws = iter([b"A" * 8, b"B" * 8])
    t = timers(idle_since=None, random_bytes=lambda n: next(draws))
    assert t.ping_sent(10.0) == b"A" * 8
    t.ping_acked(b"B" * 8, 11.0)  # the next payload, guessed: not an answer
    assert t.due(30.0) == [TimerAction.PING_TIMEOUT]
    t.ping_acked(b"A" * 8, 11.0)
    assert t.due(30.0) == [TimerAction.SEND_PING]
    assert t.ping_sent(30.0) == b"B" * 8
    t.ping_acked(b"A" * 8, 31.0)  # an old payload again: not an answer either
    assert t.next_deadline() == 50.0


def test_preface_deadline_until_received() -> None:
    t = timers(ping_interval=None, idle_since=None, preface_deadline=5.0)
    assert t.next_deadline() == 5.0
    assert t.due(5.0) == [TimerAction.PREFACE_TIMEOUT]
    t.preface_received()
    assert t.next_deadline() is None


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
