"""Solver benchmark on an accelerator: sizes L and XL, float64 and float32 kernels.

    python benchmarks/gpu_solver.py [--sizes L,XL] [--dtypes float64,float32] [--json out]

L: Q=32, N=8,192; XL: Q=64, N=32,768; K=10, 10,000 steps, 100 records, DGD on a
ring (Metropolis) at half the sufficient bound, analytic NTK of a depth-2 ReLU
MLP on synthetic data (dim 64), N/4 test samples.  Reported: kernel time,
first (compile) and warm prediction time, achieved kernel bandwidth
``steps * kernel_bytes / warm_s`` against the card's peak, and the largest
relative difference of the float32-kernel run from the float64 one.  Each
step reads the training kernel once, so bandwidth/peak is how close the solver
is to the physical limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = {"M": dict(q=16, n=2_048), "L": dict(q=32, n=8_192), "XL": dict(q=64, n=32_768)}
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0}
STEPS, RECORDS = 10_000, 100


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="L,XL")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import jax

    import ntkdyn as nd
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.dynamics.stability import sufficient_bound

    dev = jax.devices()[0]
    name = getattr(dev, "device_kind", str(dev))
    peak = next((v for k, v in PEAK_GBS.items() if k in name), float("nan"))
    print(f"device: {name} (peak {peak:.0f} GB/s), jax {jax.__version__}", flush=True)
    rows = []
    for size in args.sizes.split(","):
        q, n = SIZES[size]["q"], SIZES[size]["n"]
        data = nd.data.synthetic(n_train=n, n_test=n // 4, dim=64, classes=10, seed=0)
        parts = nd.data.partition(data, agents=q, scheme="iid", seed=0)
        w = nd.graphs.mixing(nd.graphs.topology("ring", q))
        arch = nd.models.MLP(hidden=(1024, 1024), out=10)
        t = time.perf_counter()
        problem = nd.build_problem(arch, parts, w)
        kernel_s = time.perf_counter() - t
        lr = 0.5 * sufficient_bound(problem, "dgd")
        steps = np.linspace(0, args.steps, RECORDS + 1).astype(int)
        ref = None
        for dtype in args.dtypes.split(","):
            t = time.perf_counter()
            run_problem(problem, "dgd", [lr], steps[:3], kernel_dtype=dtype,
                        check_stability=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            traj = run_problem(problem, "dgd", [lr], steps, kernel_dtype=dtype,
                               check_stability=False)[0]
            warm = time.perf_counter() - t
            nbytes = problem.kernel.size * np.dtype(dtype).itemsize
            gbs = args.steps * nbytes / warm / 1e9
            row = dict(size=size, Q=q, N=n, dtype=dtype, steps=args.steps,
                       kernel_s=round(kernel_s, 2), compile_s=round(first, 2),
                       warm_s=round(warm, 2), ms_per_step=round(1e3 * warm / args.steps, 3),
                       achieved_gbs=round(gbs, 1), pct_peak=round(100 * gbs / peak, 1),
                       status=traj.status)
            if ref is None:
                ref = traj
            else:
                row["max_rel_diff_vs_float64"] = {
                    m: float(np.max(np.abs(getattr(traj, m) - getattr(ref, m)))
                             / np.max(np.abs(getattr(ref, m))))
                    for m in ("train_loss", "test_loss", "param_dist", "consensus_dist")}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del problem
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
