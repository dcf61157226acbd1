"""The check's learning-rate sweep with a mixing process on the low-rank path: one pass
with the rates times the mixing groups as column groups
(:func:`ntkdyn.lowrank.gossip.predict_lowrank_process_sweep`) against one
:func:`~ntkdyn.lowrank.gossip.predict_lowrank_process` per rate (what ``ntkdyn check``
ran before), in the same process, each timed on its second call (compiled).

    PYTHONPATH=. python benchmarks/lowrank_process_sweep.py [--n 4000 --agents 32 --rank 128
        --samples 16 --rates 10 --steps 200]

Synthetic data (10 classes, 64 dimensions), iid shards, random gossip on a ring (each
edge active with probability 0.5; ``--mixing periodic``: ring and complete alternating),
DGD, depth-2 analytic kernel factored once at ``--rank``, rates spread over
``[0.05, 0.5]``, 11 records, no centralised reference, accuracies at the last record (as
the check; also timed with the accuracies at every record, as the runs per rate record
them).  ``--loss cross_entropy``: :func:`~ntkdyn.lowrank.cross_entropy.
predict_lowrank_ce_sweep` in one pass against one pass per rate (``rate_block=1``, what
``ntkdyn check`` runs with random gossip), both with ``train_records="final"``.  Prints
JSON: wall and process CPU time of each, the ratio, the largest relative difference of the
final network-mean test loss, and the load average.
A timing script, never a test: the figures go into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce_sweep
from ntkdyn.lowrank.gossip import predict_lowrank_process, predict_lowrank_process_sweep


def _timed(fn):
    fn()  # compile
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=32)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rates", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--mixing", choices=("random", "periodic"), default="random",
                    help="random gossip on a ring, or a ring / complete periodic sequence")
    ap.add_argument("--loss", choices=("mse", "cross_entropy"), default="mse",
                    help="cross_entropy: predict_lowrank_ce_sweep in one pass against "
                         "rate_block=1, training records at the last record in both")
    args = ap.parse_args(argv)
    data = nd.data.synthetic(n_train=args.n, n_test=args.test, dim=64, classes=10, seed=0)
    parts = nd.data.partition(data, agents=args.agents, scheme="iid", seed=0)
    ring = nd.graphs.topology("ring", args.agents)
    if args.mixing == "random":
        proc = nd.graphs.random_edges(ring, 0.5, seed=0)
    else:
        proc = nd.graphs.periodic([nd.graphs.mixing(ring), nd.graphs.mixing(
            nd.graphs.topology("complete", args.agents))])
    src = lowrank.analytic_columns(data.x_train, data.x_test, hidden_layers=2)
    t0 = time.perf_counter()
    factor = lowrank.factorize(src, args.rank)
    t_factor = time.perf_counter() - t0
    lrs = list(np.linspace(0.05, 0.5, args.rates))
    steps = range(0, args.steps + 1, args.steps // 10)
    kw = dict(samples=args.samples if args.mixing == "random" else None,
              y_test=data.y_test, reference=False)
    y, agent = data.y_train, parts.agent
    if args.loss == "cross_entropy":  # both with the training records at the last record
        def sweep(**extra):
            return predict_lowrank_ce_sweep(factor, y, agent, proc, lrs, steps,
                                            train_records="final", **kw)

        def per_rate():
            return predict_lowrank_ce_sweep(factor, y, agent, proc, lrs, steps,
                                            train_records="final", rate_block=1, **kw)
    else:
        def sweep(**extra):
            return predict_lowrank_process_sweep(factor, y, agent, proc, lrs, steps, **kw,
                                                 **extra)

        def per_rate():
            return [predict_lowrank_process(factor, y, agent, proc, lr, steps, **kw)
                    for lr in lrs]
    one, w1, c1 = _timed(lambda: sweep(accuracies="final"))
    w3 = c3 = None
    if args.loss == "mse":
        _, w3, c3 = _timed(sweep)
    per, w2, c2 = _timed(per_rate)
    a = np.array([t.network_mean("test_loss")[-1] for t in one])
    b = np.array([t.network_mean("test_loss")[-1] for t in per])
    res = {
        "loss": args.loss, "mixing": args.mixing, "n": args.n, "agents": args.agents,
        "rank": args.rank, "samples": args.samples,
        "rates": args.rates, "steps": args.steps, "factor_s": round(t_factor, 2),
        "one_pass_wall_s": round(w1, 2), "one_pass_cpu_s": round(c1, 2),
        "one_pass_all_accuracies_wall_s": w3 and round(w3, 2),
        "one_pass_all_accuracies_cpu_s": c3 and round(c3, 2),
        "per_rate_wall_s": round(w2, 2), "per_rate_cpu_s": round(c2, 2),
        "speedup_wall": round(w2 / w1, 2), "speedup_cpu": round(c2 / c1, 2),
        "max_rel_diff_final_test_loss": float(np.max(np.abs(a - b) / np.abs(b))),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(res, indent=1), flush=True)
    return res


if __name__ == "__main__":
    main()
