"""Access-log records read back (zt.lab.logs) in both formats the daemon writes."""

from __future__ import annotations

from pathlib import Path

from zt.lab import logs
from zt.telemetry.connections import ConnectionInfo, ConnectionOutcome, Peer, access_record

INFO = ConnectionInfo(
    direction="inbound",
    src=Peer("10.1.0.2:40000", "pod1-1", "lab", "spiffe://cluster.local/ns/lab/sa/sa-pod1-1"),
    dst=Peer("10.2.0.2:15008", "pod2-1", "lab", "spiffe://cluster.local/ns/lab/sa/sa-pod2-1"),
    hbone_addr="10.2.0.2:9090",
    protocol="hbone",
)
OUTCOME = ConnectionOutcome(0, 0, 0.01, "DENY", 'denied by "lab/deny" = yes', "lab/deny-port-9090")


def test_text_and_json_records_parse_to_the_same_fields() -> None:
    text = "2026-11-22T04:50:24Z info zt.access: " + access_record(INFO, OUTCOME, "text", 0.0)
    json_line = access_record(INFO, OUTCOME, "json", 0.0)
    a, b = logs.parse_line(text), logs.parse_line(json_line)
    assert a is not None and b is not None
    assert a.fields == b.fields
    assert a.direction == "inbound" and a.flags == "DENY"
    assert a.get("error") == 'denied by "lab/deny" = yes'
    assert a.get("src.identity") == "spiffe://cluster.local/ns/lab/sa/sa-pod1-1"
    assert a.count("bytes_recv") == 0 and a.get("policy") == "lab/deny-port-9090"


def test_other_lines_are_not_records() -> None:
    assert logs.parse_line("2026 info zt.node: node node1 ready: 2 pods") is None
    assert logs.parse_line('{"msg": "pod added"}') is None


def test_records_after_an_offset_and_waiting_for_a_match(tmp_path: Path) -> None:
    log = tmp_path / "node1.log"
    log.write_text(access_record(INFO, OUTCOME) + "\n")
    offset = logs.size(log)
    ok = ConnectionOutcome(5, 5, 0.01)
    with open(log, "a") as f:
        f.write("noise\n" + access_record(INFO, ok) + "\n")
    found = logs.records(log, offset)
    assert [r.flags for r in found] == ["-"]
    hit = logs.wait_for(log, 0, lambda r: r.count("bytes_sent") == 5, timeout=0.1)
    assert hit is not None and hit.count("bytes_recv") == 5
    assert logs.wait_for(log, 0, lambda r: r.flags == "CONNECT", timeout=0.1) is None
    assert logs.records(tmp_path / "missing.log") == [] and logs.size(tmp_path / "x") == 0
