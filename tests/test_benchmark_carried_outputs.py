"""``benchmarks/carried_outputs.py`` runs end to end at a tiny size: the plain and the
carried state give the same records, and every timing is reported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_carried_outputs_benchmark_runs():
    spec = importlib.util.spec_from_file_location(
        "bench_carried_outputs", ROOT / "benchmarks" / "carried_outputs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--n", "64", "--test", "16", "--agents", "8", "--steps", "10",
                      "--records", "10", "--dtype", "float64", "--reference"])
    assert res["max_rel_diff"] <= 1e-12
    assert isinstance(res["auto_carries"], bool)
    for key in ("plain_wall_s", "carried_wall_s", "plain_cpu_s", "carried_cpu_s"):
        assert res[key] > 0, key
