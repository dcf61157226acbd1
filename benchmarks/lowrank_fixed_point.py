"""The steady state on the low-rank coordinates at data-set scale: the XL-data
configuration of ``benchmarks/lowrank.py`` (synthetic MNIST-shaped data, 100 agents on an
Erdos-Renyi graph with Metropolis weights, depth-2 width-1024 analytic NTK, DGD) at a
given rank, solved by preconditioned conjugate gradients
(:func:`ntkdyn.lowrank.steady_state.lowrank_fixed_point`, ``Q r`` unknowns per output
column, no ``(Q r)^2`` matrix).  Prints the factor's and the solve's seconds, the peak
resident set, the CG iterations' outcome and the steady-state figures, as JSON.

    python benchmarks/lowrank_fixed_point.py --n-train 60000 --n-test 10000 --rank 512
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    from lowrank import make_data

    import ntkdyn as nd
    from ntkdyn import lowrank
    from ntkdyn.lowrank.steady_state import lowrank_fixed_point

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--rank", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.25)
    p.add_argument("--method", default="auto", choices=("auto", "cg", "dense", "gmres"))
    args = p.parse_args(argv)
    x, y, xt, yt = make_data(args.n_train, args.n_test, 784, 10, 16)
    q = args.agents
    agent = np.random.default_rng(1).permutation(len(x)) % q
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", q, p=0.05, seed=0),
                         rule="metropolis")
    t0 = time.perf_counter()
    source = lowrank.analytic_columns(x, xt, hidden_layers=2)
    factor = lowrank.factorize(source, args.rank, seed=0)
    t1 = time.perf_counter()
    info: dict = {}
    fp = lowrank_fixed_point(factor, y, agent, w, "dgd", args.lr, y_test=yt,
                             method=args.method, info=info, verify=False)  # the solve alone
    t2 = time.perf_counter()
    out = {"n_train": args.n_train, "n_test": args.n_test, "agents": q, "rank": factor.rank,
           "unknowns_per_column": q * factor.rank, **info,
           "factor_s": round(t1 - t0, 1), "fixed_point_s": round(t2 - t1, 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "consensus_gap": fp.consensus_gap, "central_gap": fp.central_gap,
           "test_loss_mean": float(np.mean(fp.test_loss)),
           "central_test_loss": fp.central_test_loss,
           "train_loss_mean": float(np.mean(fp.train_loss))}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
