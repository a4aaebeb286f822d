from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zt.telemetry.metrics import Registry


def test_render_exposition_format() -> None:
    reg = Registry()
    c = reg.counter("zt_things_total", "Things", ("kind",))
    c.inc(labels={"kind": 'a"b\\c\nd'})
    c.inc(2, {"kind": "plain"})
    g = reg.gauge("zt_open", "Open now")
    g.set(3)
    g.dec()
    reg.add_collector(lambda: [("zt_bpf_verdict_total", "From BPF", "counter", 7.0)])
    text = reg.render()
    assert "# TYPE zt_things_total counter" in text
    assert 'zt_things_total{kind="a\\"b\\\\c\\nd"} 1.0\n' in text  # escaped as the format says
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("zt_things_total", (("kind", 'a"b\\c\nd'),))] == 1
    assert samples[("zt_things_total", (("kind", "plain"),))] == 2
    assert samples[("zt_open", ())] == 2
    assert samples[("zt_bpf_verdict_total", ())] == 7
    assert text.endswith("\n")


def test_counter_refuses_to_go_down_and_redeclaration_must_match() -> None:
    reg = Registry()
    c = reg.counter("x_total", "x", ("a",))
    with pytest.raises(ValueError, match=r"x_total: got inc\(-1\)"):
        c.inc(-1)
    with pytest.raises(ValueError, match="expected counter"):
        reg.counter("x_total", "x", ("b",))
    with pytest.raises(ValueError, match="expected counter"):
        reg.gauge("x_total", "x", ("a",))
    with pytest.raises(ValueError, match="expected a name ending in _total"):
        reg.counter("x", "x")  # it would be exposed as x_total: a name nobody asked for
