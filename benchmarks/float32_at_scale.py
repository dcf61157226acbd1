"""float32 kernel products against the float64 default at size L (README, cost section).

Usage::

    python benchmarks/float32_at_scale.py [--steps 1000] [--size L]

The problem of ``benchmarks/solver.py`` at the given size (synthetic Gaussian mixture,
iid shards, ring with Metropolis weights, the analytic NTK of ``MLP(hidden=(1024, 1024))``,
DGD at half the sufficient bound), run for ``--steps`` steps with 11 records, once with
``kernel_dtype="float64"`` (the default) and once with ``"float32"``.  Prints the wall time
of each (the first also pays compilation and the reference's one-off ``eigh``) and the
largest relative difference of every recorded metric, as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "param_dist",
           "consensus_dist", "central_dist")


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from solver import SIZES

    import ntkdyn
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.dynamics.stability import sufficient_bound

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--size", default="L", choices=sorted(SIZES))
    args = ap.parse_args(argv)
    cfg = SIZES[args.size]
    q, n, k = cfg["q"], cfg["n"], cfg["k"]
    data = ntkdyn.data.synthetic(n_train=n, n_test=n // 4, dim=64, classes=k, seed=0)
    parts = ntkdyn.data.partition(data, agents=q, scheme="iid", seed=0)
    w = ntkdyn.graphs.mixing(ntkdyn.graphs.topology("ring", q))
    problem = ntkdyn.build_problem(ntkdyn.models.MLP(hidden=(1024, 1024), out=k), parts, w)
    lr = 0.5 * sufficient_bound(problem, "dgd")
    steps = np.linspace(0, args.steps, 11).astype(int)
    out: dict = {"size": args.size, "steps": args.steps, "load": os.getloadavg()[0]}
    trajs = {}
    for dtype in ("float64", "float32"):
        t = time.perf_counter()
        trajs[dtype] = run_problem(problem, "dgd", [lr], steps, kernel_dtype=dtype)[0]
        out[f"{dtype}_s"] = time.perf_counter() - t
    for m in METRICS:
        a = np.asarray(getattr(trajs["float64"], m))
        b = np.asarray(getattr(trajs["float32"], m))
        out[m] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))
    out["load_end"] = os.getloadavg()[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
