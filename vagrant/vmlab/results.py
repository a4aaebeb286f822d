"""Pure: JUnit XML from pytest -> a summary; per-kernel results -> JSON and the printed table."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

from vmlab.errors import VmLabError


@dataclass(frozen=True)
class Summary:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: tuple[str, ...] = ()  # test ids that failed or errored

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0


def parse_junit(xml_text: str) -> Summary:
    """Counts per outcome from pytest's --junitxml (testcase children: failure/error/skipped)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise VmLabError(f"junit xml: not parseable ({exc})") from exc
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    seconds = 0.0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        seconds += float(suite.get("time", "0") or 0)
        for case in suite.iter("testcase"):
            outcome = _outcome(case)
            counts[outcome] += 1
            if outcome in ("failed", "errors"):
                failures.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return Summary(**counts, seconds=round(seconds, 1), failures=tuple(failures))


def _outcome(case: ET.Element) -> str:
    tags = {child.tag for child in case}
    if "error" in tags:
        return "errors"
    if "failure" in tags:
        return "failed"
    if "skipped" in tags:
        return "skipped"
    return "passed"


@dataclass(frozen=True)
class KernelResult:
    kernel: str  # the knob
    kver: str  # uname -r in the guest
    accel: str
    boot_to_ssh_s: tuple[float, ...]
    tiers: tuple[str, ...]  # test paths that existed and ran
    tests: Summary
    smoke: Summary
    total_s: float
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.tests.ok and self.smoke.ok and self.smoke.total > 0


def to_json(result: KernelResult) -> str:
    return json.dumps(asdict(result), indent=2)


def from_json(text: str) -> KernelResult:
    raw = json.loads(text)
    raw["tests"] = Summary(**{**raw["tests"], "failures": tuple(raw["tests"]["failures"])})
    raw["smoke"] = Summary(**{**raw["smoke"], "failures": tuple(raw["smoke"]["failures"])})
    for key in ("boot_to_ssh_s", "tiers", "notes"):
        raw[key] = tuple(raw[key])
    return KernelResult(**raw)


def _cell(s: Summary) -> str:
    return f"{s.passed} passed, {s.failed} failed, {s.errors} errors, {s.skipped} skipped ({s.seconds:.0f} s)"


def format_table(results: list[KernelResult]) -> str:
    """One row per kernel: version, accel, boot-to-ssh, smoke, test tiers, verdict; then failures."""
    head = ("kernel", "uname -r", "accel", "boot→ssh s", "node smoke", "zt test tiers", "verdict")
    rows = [
        (
            r.kernel,
            r.kver,
            r.accel,
            "/".join(f"{s:.0f}" for s in r.boot_to_ssh_s),
            _cell(r.smoke),
            f"{' '.join(r.tiers) or '(none present)'}: {_cell(r.tests)}",
            "PASS" if r.ok else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in (head, *rows)
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        lines += [f"  {r.kernel}: FAILED {name}" for name in (*r.smoke.failures, *r.tests.failures)]
        lines += [f"  {r.kernel}: note: {note}" for note in r.notes]
    return "\n".join(lines)
