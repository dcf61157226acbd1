"""``benchmarks/width_for_ce.py`` (width_for with cross-entropy against real networks) runs
end to end on a tiny case, and its networks are paired with the predictions it compares
them with (same initialisations, same SGD batch sequence)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_width_for_ce",
                                                  ROOT / "benchmarks" / "width_for_ce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_width_for_ce_benchmark_runs_and_pairs_networks_with_predictions(tmp_path):
    """Tiny case (widths 16 and 32, 2 kernels, 2 networks, 4 SGD steps of batch 5): the
    CLI writes one row; trained *linearised* in float64, every network's final test loss
    equals the full-empirical-kernel prediction on the same batch sequence to 1e-10
    (measured 3e-16), so the benchmark's real networks start from the seeds and run on the
    batches it says; the reported half-widths and the ratio agree with the raw numbers
    (1e-12). About 10 s (compilation)."""
    bench = _bench()
    out = tmp_path / "w.json"
    assert bench.main(["--tols", "0.05", "--batches", "5", "--networks", "2", "--steps", "4",
                       "--widths", "16,32", "--width-samples", "2", "--init-samples", "2",
                       "--linearised", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch_size"] == 5 and row["networks"] == 2 and row["width"] >= 1
    assert row["gap_real_vs_full"]["max_abs"] < 1e-10
    assert set(row["linearised_same_seeds"]) == {"sequence0", "mean"}
    assert row["ratio"] == row["real_centred"] / 0.05
    lo, hi = row["ratio_90ci"]
    assert 0 <= lo <= hi and np.isfinite(hi)
    vals = np.array([[0.1, 0.2], [0.3, 0.1], [0.2, 0.25]])
    assert abs(bench.half_width(vals) - 1.6448536269514722 * np.std(vals[:, 0], ddof=1)) \
        < 1e-12
