"""``benchmarks/lowrank.py --f0 mean|random`` (the XL configuration through ``nd.predict``)
runs end to end at tiny sizes and reports the figures the README quotes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-train", "240", "--n-test", "60", "--agents", "6", "--p", "0.6", "--steps", "10",
        "--records", "2", "--max-rank", "32", "--exact-n", "0", "--samples", "4"]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lowrank",
                                                  ROOT / "benchmarks" / "lowrank.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 10 s of CPU (two tiny low-rank predictions, JAX compilation)
def test_lowrank_benchmark_f0_flag(tmp_path):
    """Both runs go through ``nd.predict`` on the low-rank path: probe-row estimate and
    trace estimate reported, rank <= max_rank; ``random`` reports ``samples`` networks and
    a 5-95 % band with lower <= upper, and its mean network's final test loss equals the
    ``mean`` run's (same factor, same seed: relative 1e-9)."""
    bench, res = _bench(), {}
    for f0 in ("mean", "random"):
        out = tmp_path / f"{f0}.json"
        assert bench.main([*TINY, "--f0", f0, "--json", str(out)]) == 0
        res[f0] = json.loads(out.read_text())["xl_user"]
    for row in res.values():
        assert row["error_estimate_kind"] == "probe rows"
        assert row["error_bound_trace"] is not None and row["error_estimate"] > 0
        assert 1 <= row["rank"] <= 32 and row["status"] == "ok"
        assert row["total_s"] >= row["factor_s"] >= 0 and row["peak_rss_gb"] > 0
    mean, rnd = res["mean"], res["random"]
    assert mean["samples"] is None and rnd["samples"] == 4 and rnd["f0"] == "random"
    lo, hi = rnd["final_test_loss_band"]
    assert lo <= hi and rnd["nngp_factor_s"] >= 0 and mean["nngp_factor_s"] == 0
    assert rnd["rank"] == mean["rank"]
    assert rnd["mean_network_final_test_loss"] == pytest.approx(mean["final_test_loss"],
                                                                rel=1e-9)


@pytest.mark.slow  # a fresh `ntkdyn check` process at a tiny size, about 15 s
def test_lowrank_check_benchmark_runs_the_check_at_tiny_size():
    """``benchmarks/lowrank_check.py`` runs ``ntkdyn check`` with a rank in a fresh process
    and reports the breakdown and the three verdicts (CTA's equal to ATC's)."""
    spec = importlib.util.spec_from_file_location("bench_lowrank_check",
                                                  ROOT / "benchmarks" / "lowrank_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--n-train", "300", "--n-test", "60", "--agents", "6", "--p", "0.6",
                      "--rank", "12"])
    assert out["wall_s"] >= out["timings_s"]["total_s"] > 0
    names = [v["algorithm"] for v in out["verdicts"]]
    assert names == ["dgd", "atc", "cta"]
    atc, cta = out["verdicts"][1], out["verdicts"][2]
    assert atc["spectral_radius"] == cta["spectral_radius"] and atc["lr_star"] == cta["lr_star"]
    assert all(v["method"].startswith("low-rank (rank 12)") for v in out["verdicts"])


def test_lowrank_check_benchmark_with_a_periodic_sequence():
    """``--sequence ring,star``: the check runs on a periodic sequence, which has no -1
    crossing shortcut, so every verdict comes from the stable-set search (dense here)."""
    spec = importlib.util.spec_from_file_location("bench_lowrank_check",
                                                  ROOT / "benchmarks" / "lowrank_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--n-train", "120", "--n-test", "30", "--agents", "4", "--rank", "8",
                      "--steps", "40", "--sequence", "ring,star"])
    assert out["sequence"] == "ring,star" and out["steps"] == 40
    assert all(v["method"].endswith("brent-dense") for v in out["verdicts"]), out["verdicts"]
