"""benchmarks/gpu.py runs on a CPU in its tiny setting and reports what it promises."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_tiny_setting_on_cpu_reports_times_memory_agreement_and_bf16(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    gpu.main(["--tiny", "--device", "cpu", "--bf16", "--json", str(tmp_path / "out.json")])
    report = json.loads((tmp_path / "out.json").read_text())
    printed = capsys.readouterr().out
    assert report["device"] == "cpu" and report["device_name"] in printed
    rows = report["rows"]
    assert [r["workload"] for r in rows] == ["E1", "E2", "E2-500", "E1-DPSGD"]
    assert rows[2]["agents_per_round"] > rows[1]["agents_per_round"]
    for row in rows:
        assert row["sequential_s"] > 0 and row["vectorized_s"] > 0
        assert row["speedup"] == pytest.approx(row["sequential_s"] / row["vectorized_s"])
        assert row["max_weight_difference"] < 1e-4  # the two backends trained the same model
        assert row["chunk_size"] >= 1 and row["vectorized_peak_mib"] > 0
        assert f"{row['speedup']:9.2f}" in printed
    assert [c["workload"] for c in report["bf16"]] == ["E1", "E2", "E2-500"]
    for check in report["bf16"]:
        assert 0 <= check["bf16_test_acc"] <= 1 and check["bf16_s"] > 0
        assert check["accuracy_ok"] == (abs(check["bf16_test_acc"] - check["fp32_test_acc"]) <= gpu.BF16_TOLERANCE)
    assert "bf16-mixed (vectorized) against fp32" in printed


def test_gpu_benchmark_rejects_an_unknown_workload():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["E9", "--device", "cpu"])
    assert exit_info.value.code == 2
