"""Smoke test of ``python -m benchmarks.kernels``: workers run, rows carry the record fields,
implementations agree, and the CSV is written."""

import csv

from benchmarks import kernels as bench


def test_small_sweep_writes_checked_rows(tmp_path, capsys):
    out = tmp_path / "k.csv"
    assert bench.main(["--op", "swiglu", "--device", "cpu", "--sweep", "small",
                       "--impls", "llmcore,eager", "--budget", "0", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["impl"] for r in rows] == ["llmcore", "eager"]
    for r in rows:
        assert r["device"].startswith("cpu") and r["dtype"] == "fp32" and r["shape"] == "64x48"
        assert r["commit"] and r["timestamp"] and float(r["time_ms"]) > 0
        assert float(r["peak_mem_mib"]) >= 0 and r["unit"] == "GB/s"
    assert rows[0]["check"] == "ok" and rows[1]["check"] == "ref"
    assert "swiglu" in capsys.readouterr().out


def test_worker_measures_linear_cross_entropy_in_process():
    res = bench.run_case({"op": "linear_cross_entropy", "impl": "llmcore", "shape": [64, 32, 97],
                          "dtype": "fp32", "device": "cpu", "budget_s": 0})
    ref = bench.run_case({"op": "linear_cross_entropy", "impl": "eager", "shape": [64, 32, 97],
                          "dtype": "fp32", "device": "cpu", "budget_s": 0})
    assert res["unit"] == "TFLOP/s" and res["time_ms"] > 0
    assert bench._agree(res["check"], ref["check"], "fp32")
