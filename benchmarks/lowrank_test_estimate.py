"""The low-rank path's two error estimates against the exact path at N = 2,048 (README,
"What the two error numbers bound"; ``theory/low_rank.md`` section 3.1).

N = 2,048 training and M = 512 test samples (``benchmarks/lowrank.py``'s ``make_data``:
an isotropic Gaussian mixture in d = 64 dims, 10 classes, seed 0), the analytic NTK of a
depth-2 ReLU MLP, 16 agents on a ring (equal shards, Metropolis), DGD at ``--lr``, 300
steps (rate 0.25), 30 records, the mean network (f0 = 0).  Per rank: ``error_estimate`` and the
measured ``max_{t,q} ||f_q - f~_q|| / ||Y||`` on the training outputs, ``error_estimate_test``
(with its forcing / propagated / retained parts) and the same measured on the test
outputs, and the relative error of the final network-mean test loss::

    python benchmarks/lowrank_test_estimate.py [--ranks 32,128,512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-test", type=int, default=512)
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--ranks", default="32,128,512")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from lowrank import make_data

    import ntkdyn as nd
    from ntkdyn import lowrank
    from ntkdyn.kernels import analytic_ntk

    x, y, xt, yt = make_data(args.n_train, args.n_test, 64, 10, 0)
    q, n = args.agents, len(x)
    agent = np.arange(n) % q
    w = nd.graphs.mixing(nd.graphs.topology("ring", q), rule="metropolis")
    steps = np.linspace(0, args.steps, 31).round().astype(int)
    t0 = time.perf_counter()
    exact = nd.predict_from_kernels(analytic_ntk(x, hidden_layers=2), y, agent, w, args.lr,
                                    steps, "dgd", kernel_test_train=analytic_ntk(
                                        xt, x, hidden_layers=2), y_test=yt,
                                    reference=False, record_outputs=True)
    rows = [{"exact_seconds": round(time.perf_counter() - t0, 1)}]
    print(rows[0], flush=True)
    src = lowrank.analytic_columns(x, xt, hidden_layers=2)
    final = exact.network_mean("test_loss")[-1]
    for rank in (int(r) for r in args.ranks.split(",")):
        low = lowrank.predict(src, y, agent, w, args.lr, steps, "dgd", rank=rank, y_test=yt,
                              reference=False, record_outputs=True)
        meta = low.metadata["low_rank"]
        t = len(steps)

        def err(a, b, ref, t=t):
            return float(np.max(np.linalg.norm((a - b).reshape(t, q, -1), axis=-1))
                         / np.linalg.norm(ref))

        row = {"rank": rank, "estimate": meta["error_estimate"],
               "train": err(exact.train_outputs, low.train_outputs, y),
               "estimate_test": meta["error_estimate_test"],
               **{k: meta[f"error_estimate_test_{k}"]
                  for k in ("forcing", "propagated", "retained")},
               "test": err(exact.test_outputs, low.test_outputs, yt),
               "final_test_loss_rel": float(abs(low.network_mean("test_loss")[-1] - final)
                                            / final)}
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
