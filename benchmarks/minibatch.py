"""Cost of mini-batch SGD predictions: ``samples`` sampled batch sequences vs one.

Usage::

    python benchmarks/minibatch.py [--n 1024] [--q 8] [--k 10] [--steps 200] [--batch 32]
                                   [--samples 1,8,64] [--json out.json]

Synthetic Gaussian-mixture data (dim 64, ``K`` classes), an iid partition over ``Q``
agents, a ring, the analytic NTK of ``MLP(hidden=(1024, 1024), out=K)`` (traced kernel),
ATC at lr 0.5 with the squared loss, ``steps`` steps with 10 records, ``N/4`` test
samples.  For each ``samples``: the warm wall time of ``ntkdyn.dynamics.run.run_problem`` with
``batch_size`` (best of 2 calls after a compiling one), next to the full-batch prediction.
Every mini-batch run also carries the full-batch expected group (one more column group),
so ``samples = 1`` runs two groups and ``samples = 64`` sixty-five.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--q", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn.dynamics.run import run_problem

    data = nd.data.synthetic(n_train=args.n, n_test=args.n // 4, dim=64, classes=args.k,
                             seed=0)
    parts = nd.data.partition(data, agents=args.q, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", args.q))
    arch = nd.models.MLP(hidden=(1024, 1024), out=args.k)
    problem = nd.build_problem(arch, parts, w)
    steps = np.linspace(0, args.steps, 11).astype(int)

    def timed(**kw) -> float:
        run_problem(problem, "atc", [0.5], steps, check_stability=False, **kw)  # compile
        best = np.inf
        for _ in range(args.repeats):
            tic = time.perf_counter()
            run_problem(problem, "atc", [0.5], steps, check_stability=False, **kw)
            best = min(best, time.perf_counter() - tic)
        return float(best)

    out = {"n": args.n, "q": args.q, "k": args.k, "steps": args.steps, "batch": args.batch,
           "full_batch_s": timed()}
    print(f"N={args.n} Q={args.q} K={args.k} steps={args.steps} batch={args.batch}")
    print(f"full batch: {out['full_batch_s']:.3f} s")
    for s in (int(v) for v in args.samples.split(",")):
        out[f"samples_{s}_s"] = timed(batch_size=args.batch, samples=s)
        print(f"samples={s}: {out[f'samples_{s}_s']:.3f} s")
    sizes = [int(v) for v in args.samples.split(",")]
    if 1 in sizes:
        for s in sizes:
            out[f"ratio_{s}_over_1"] = out[f"samples_{s}_s"] / out["samples_1_s"]
            print(f"ratio samples={s} / samples=1: {out[f'ratio_{s}_over_1']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
