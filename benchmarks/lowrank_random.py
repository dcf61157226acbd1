"""One random network on the low-rank path against the exact path (README, "Data-set scale:
the low-rank path", one random network).

    PYTHONPATH=. python benchmarks/lowrank_random.py [--n 2000] [--ranks 256 1000]

Synthetic digits-like data (10 classes, 64 dimensions), 16 agents on a ring, DGD at lr 0.5,
200 steps, an MLP (512, 512) analytic kernel, 32 sampled networks.  Prints wall time and the
final test loss (network mean over agents) with its 5-95 % band over the networks for:

* ``exact``: the exact path, f0 from the exact Cholesky draws (float64);
* ``NTK rank r, exact-law draws``: the low-rank path with draws from the exact Cholesky
  of the NNGP (other samples than the exact path's, same law: isolates the NTK truncation);
* ``NTK rank r, NNGP rank r``: ``nd.predict(rank=r)``, the default (f0 from the rank-r
  NNGP factor plus the residual diagonal: isolates nothing, the full approximation).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.dynamics.random_init import InitDraws, draw
from ntkdyn.kernels import analytic_kernels


def _line(name, traj, dt):
    lo, hi = traj.band("test_loss", 0.05, 0.95, over="init")
    d = traj.metadata.get("low_rank", {}).get("f0_draws", {})
    extra = (f", NNGP residual trace {d['relative_residual']:.3f}"
             if "relative_residual" in d else "")
    print(f"{name:30s} {dt:6.1f} s  test loss {traj.test_loss[-1].mean():.4f} "
          f"(5-95 %: {lo[-1].mean():.4f}-{hi[-1].mean():.4f}), mean network "
          f"{traj.mean_network.test_loss[-1].mean():.4f}{extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--ranks", type=int, nargs="+", default=[256, 1000])
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    data = nd.data.synthetic(n_train=args.n, n_test=args.test, dim=64, classes=10, seed=0)
    parts = nd.data.partition(data, agents=16, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", 16))
    arch = nd.models.MLP(hidden=(512, 512), out=10)
    steps = range(0, args.steps + 1, args.steps // 10)
    t0 = time.perf_counter()
    exact = nd.predict(arch, parts, w, 0.5, steps=steps, kernel_dtype="float64")
    _line("exact", exact, time.perf_counter() - t0)
    pooled = np.concatenate([data.x_train, data.x_test])
    nngp = analytic_kernels(pooled, hidden_layers=2)[0]
    g = draw(nngp, args.n, 32, 1)  # exact-law draws (Cholesky), caller's order
    same = InitDraws(train=g.train, test=g.test, seed=0, jitter=g.jitter)
    src = lowrank.analytic_columns(data.x_train, data.x_test, hidden_layers=2)
    for r in args.ranks:
        t0 = time.perf_counter()
        traj = lowrank.predict(src, data.y_train, parts.agent, w, 0.5, steps, rank=r,
                               y_test=data.y_test, init=same)
        _line(f"NTK rank {r}, exact-law draws", traj, time.perf_counter() - t0)
        t0 = time.perf_counter()
        traj = nd.predict(arch, parts, w, 0.5, steps=steps, rank=r)
        _line(f"NTK rank {r}, NNGP rank {r}", traj, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
