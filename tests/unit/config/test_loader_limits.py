"""What one mesh document may cost before it is refused: size, nesting depth, alias expansion;
and what a refusal may cost to report (bounded messages)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from zt.config import load_file, load_text
from zt.config.loader import MAX_DEPTH, MAX_FILE_BYTES
from zt.errors import MAX_PROBLEMS_SHOWN, ConfigError, FieldProblem


def _laughs(levels: int = 9, fan: int = 9) -> str:
    """The "billion laughs": each level is `fan` aliases of the one before (fan**levels leaves)."""
    lines = ["a: &a [" + ",".join(['"lol"'] * fan) + "]"]
    prev = "a"
    for i in range(1, levels):
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * fan) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def _refused(text: str, source: str = "mesh.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(text, source)
    return info.value


def test_billion_laughs_is_refused_fast_with_a_short_message_naming_the_line() -> None:
    text = _laughs()
    assert len(text) < 400
    started = time.perf_counter()
    error = _refused(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1, f"{elapsed:.3f} s"
    assert error.reason == "config_alias_expansion"
    assert len(str(error)) < 500
    assert "line 7" in str(error) and "once aliases are expanded" in str(error)


def test_aliases_within_the_budget_still_load() -> None:
    text = "x-ips: &ips [10.0.0.1]\nworkloads:\n  - {uid: a, name: a, workloadIps: *ips}\n"
    with pytest.raises(ConfigError) as info:  # x-ips is not a mesh key: the schema says so
        load_text(text, "mesh.yaml")
    assert info.value.reason == "config_invalid" and "x-ips" in str(info.value)
    doc = "workloads:\n  - &w {uid: a, name: a, workloadIps: [10.0.0.1]}\n"
    assert len(load_text(doc, "mesh.yaml").workloads) == 1


def test_a_recursive_alias_is_refused() -> None:
    error = _refused("workloads: &w [*w]\n")
    assert error.reason == "config_alias_expansion" and "line 1" in str(error)


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_nesting_deeper_than_the_limit_is_refused_naming_the_line(flow: bool) -> None:
    depth = 100_000 if flow else MAX_DEPTH + 5
    if flow:
        text = "workloads: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v\n"
    started = time.perf_counter()
    error = _refused(text)
    assert time.perf_counter() - started < 5.0
    assert error.reason == "config_too_deep"
    assert f"at most {MAX_DEPTH} levels" in str(error) and "line " in str(error)
    if not flow:
        assert f"line {MAX_DEPTH}" in str(error)


def test_deep_json_is_refused_without_recursion_error() -> None:
    depth = 200_000
    error = _refused("[" * depth + "]" * depth, "mesh.json")
    assert error.reason == "config_too_deep"
    nested: object = 1
    for _ in range(MAX_DEPTH + 1):
        nested = [nested]
    error = _refused(json.dumps({"workloads": nested}), "mesh.json")
    assert error.reason == "config_too_deep"


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    with path.open("wb") as f:
        f.write(b"workloads: []\n")
        f.truncate(MAX_FILE_BYTES * 4)  # sparse: 16 MiB that cost nothing to write
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert time.perf_counter() - started < 1.0
    assert info.value.reason == "config_too_large"
    assert f"at most {MAX_FILE_BYTES}" in str(info.value)


def test_many_problems_are_counted_but_only_the_first_shown() -> None:
    workloads = "".join(f"  - {{uid: w{i}, name: w{i}, workloadIps: [bad]}}\n" for i in range(500))
    error = _refused("workloads:\n" + workloads)
    assert len(error.problems) == 500
    message = str(error)
    assert message.count("expected") == MAX_PROBLEMS_SHOWN
    assert f"and {500 - MAX_PROBLEMS_SHOWN} more problem(s) not shown" in message
    assert len(message) < 200 * MAX_PROBLEMS_SHOWN


def test_a_huge_or_shared_value_renders_bounded() -> None:
    shared: list[object] = ["lol"] * 10
    for _ in range(30):  # 10**30 leaves if walked
        shared = [shared] * 10
    started = time.perf_counter()
    text = str(
        ConfigError(
            "m.yaml",
            [FieldProblem("x", shared, "a string"), FieldProblem("y", "z" * 10**7, "short")],
        )
    )
    assert time.perf_counter() - started < 0.1
    assert len(text) < 1000
    assert "chars)" in text  # says it was clipped


def test_zt_config_check_refuses_an_empty_file_and_accepts_an_empty_mapping(tmp_path: Path) -> None:
    empty, braces = tmp_path / "empty.yaml", tmp_path / "braces.yaml"
    empty.write_text("# nothing here yet\n")
    braces.write_text("{}\n")
    refused = CliRunner().invoke(app, ["config", "check", str(empty)])
    assert refused.exit_code == 2
    assert "an intentionally empty mesh is written `{}`" in refused.output
    accepted = CliRunner().invoke(app, ["config", "check", str(braces)])
    assert accepted.exit_code == 0, accepted.output
    assert "0 workloads" in accepted.output


def test_zt_config_check_reports_billion_laughs_briefly(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_laughs())
    result = CliRunner().invoke(app, ["config", "check", str(bomb)])
    assert result.exit_code == 2
    assert len(result.output) < 1000 and "once aliases are expanded" in result.output
