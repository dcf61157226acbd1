"""Cost of a banded prediction (one random network, ``f0="random"``) against a plain one.

    python benchmarks/random_network.py [CONFIG.toml] [--repeats 3] [--samples 32]

On one configuration (default ``examples/default.toml``: 800 digits, 8 agents, ring,
2,000 steps), in one process, times ``nd.predict`` with ``f0="mean"`` (the mean network:
``K`` state columns) and with ``f0="random"`` (``K + samples`` columns sharing every
kernel read, the kernels built on the pooled inputs with the NNGP, and its Cholesky
factor) in float64 (``kernel_dtype="float64"``), and ``f0="random"`` with the default
``kernel_dtype`` (``"mixed"`` here: the sampled networks' response columns through float32
kernel products, the mean network in float64),
interleaved, after one untimed run of each (JIT compilation); prints the medians (wall and
process CPU time: on a shared machine the CPU time is the steadier measure), their
ratios to the plain prediction (target <= 3), the largest difference of the mixed run's
draws from the float64 ones, the load average, and the final expected test loss /
accuracy with the 5-95 % band beside the mean network's.  A timing script, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's ntkdyn, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "examples" / "default.toml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=32)
    args = ap.parse_args()

    from ntkdyn import prediction as pipeline
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config

    cfg = load_config(args.config)
    exp = from_config(cfg)

    def run(f0: str):
        kw = {"samples": args.samples} if f0 != "mean" else {}
        if f0 == "mixed":  # the library default with f0="random" (kernel_dtype=None)
            f0 = "random"
        elif f0 == "random":  # float64 sampled networks, explicitly
            kw["kernel_dtype"] = "float64"
        t0, c0 = time.perf_counter(), time.process_time()
        traj = pipeline.predict(exp.arch, exp.parts, exp.mixing, cfg.training.lr,
                                exp.algorithm, cfg.steps, kernel=cfg.prediction.kernel,
                                seed=cfg.seed, f0=f0, **kw)
        return time.perf_counter() - t0, time.process_time() - c0, traj

    variants = ("mean", "random", "mixed")
    for f0 in variants:  # compile
        run(f0)
    load = [os.getloadavg()[0]]
    times: dict[str, list[float]] = {f0: [] for f0 in variants}
    cpu: dict[str, list[float]] = {f0: [] for f0 in variants}
    trajs = {}
    for _ in range(args.repeats):
        for f0 in variants:
            dt, dc, trajs[f0] = run(f0)
            times[f0].append(dt)
            cpu[f0].append(dc)
    load.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    one = trajs["random"]
    assert trajs["mixed"].metadata["kernel_dtype"] == "mixed"
    mixed_err = max(float(np.max(np.abs(np.asarray(one.draws[m]) -
                                        np.asarray(trajs["mixed"].draws[m]))))
                    for m in ("train_loss", "test_loss"))
    lo, hi = (b[-1].mean() for b in one.band("test_loss"))
    alo, ahi = (b[-1].mean() for b in one.band("test_acc"))
    out = {
        "config": str(args.config), "samples": args.samples, "repeats": args.repeats,
        "seconds_mean_network": times["mean"], "seconds_random_network": times["random"],
        "median_mean_network_s": med["mean"], "median_random_network_s": med["random"],
        "seconds_random_network_mixed": times["mixed"],
        "median_random_network_mixed_s": med["mixed"],
        "ratio": med["random"] / med["mean"],
        "ratio_mixed": med["mixed"] / med["mean"],
        "cpu_seconds": cpu, "median_cpu_s": med_cpu,
        "ratio_cpu": med_cpu["random"] / med_cpu["mean"],
        "ratio_cpu_mixed": med_cpu["mixed"] / med_cpu["mean"],
        "mixed_max_abs_loss_difference": mixed_err,
        "load_average_1min_start_end": load,
        "final_test_loss_expected": float(one.test_loss[-1].mean()),
        "final_test_loss_band_5_95": [float(lo), float(hi)],
        "final_test_acc_expected": float(one.test_acc[-1].mean()),
        "final_test_acc_band_5_95": [float(alo), float(ahi)],
        "final_test_loss_mean_network": float(one.mean_network.test_loss[-1].mean()),
        "final_test_acc_mean_network": float(one.mean_network.test_acc[-1].mean()),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
