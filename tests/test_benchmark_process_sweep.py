"""``benchmarks/lowrank_process_sweep.py`` runs end to end at a tiny size: the one pass and
the runs per rate give the same final test losses, and every timing is reported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("mixing", "loss"), [("random", "mse"), ("periodic", "mse"),
                                             ("random", "cross_entropy")])
def test_process_sweep_benchmark_runs(mixing, loss):
    spec = importlib.util.spec_from_file_location(
        "bench_process_sweep", ROOT / "benchmarks" / "lowrank_process_sweep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--n", "120", "--test", "30", "--agents", "4", "--rank", "8",
                      "--samples", "2", "--rates", "3", "--steps", "10",
                      "--mixing", mixing, "--loss", loss])
    assert res["max_rel_diff_final_test_loss"] <= 1e-10
    keys = ("one_pass_wall_s", "per_rate_wall_s") + (
        ("one_pass_all_accuracies_wall_s",) if loss == "mse" else ())
    for key in keys:
        assert res[key] > 0, key
