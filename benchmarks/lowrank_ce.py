"""Cross-entropy against the squared loss on the low-rank path: time per run on one factor
(README, "Data-set scale: the low-rank path").

    PYTHONPATH=. python benchmarks/lowrank_ce.py [--n 20000] [--agents 100] [--rank 256]
        [--networks P]

Synthetic data (10 classes, 64 dimensions), ``--agents`` agents on an Erdos-Renyi graph
(``--p`` 0.05, Metropolis weights), DGD at lr 0.5, ``--steps`` steps with 10 records, the
mean network, an MLP (512, 512) analytic kernel factored once at ``--rank`` (time printed),
then each loss run twice on that factor (the first compiles; both times printed) with the
centralised reference and a test set of ``--test`` samples.  Cross-entropy runs the feature
form (the Gram form needs an affine gradient) and evaluates every training output at each
record; the squared loss takes its default form (the Gram form when ``Q r <= 2 N``), and
``--form features`` forces the feature form for a like-for-like step.  ``--networks P``
(> 0): also one random network with cross-entropy, ``P`` networks (``P K`` draw columns
from the rank-``--rank`` NNGP factor on train + test, time printed) run as ``P + 1`` groups
of ``K`` columns (:func:`ntkdyn.lowrank.cross_entropy.predict_random_lowrank_ce`), twice.
``--sweep R`` (> 0): also ``R`` rates (0.1 .. 0.95 x 0.5) without the reference, as
``ntkdyn check`` runs them: one pass with the rates as column groups
(:func:`ntkdyn.lowrank.cross_entropy.predict_lowrank_ce_sweep`, also with
``train_records="final"`` as the check runs it) against one run per rate, each twice, the
ratios and the largest difference of the final test losses printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ntkdyn as nd
from ntkdyn import lowrank
from ntkdyn.lowrank.cross_entropy import (
    predict_lowrank_ce,
    predict_lowrank_ce_sweep,
    predict_random_lowrank_ce,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--test", type=int, default=2_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--form", default="auto", choices=("auto", "features"))
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--networks", type=int, default=0)
    ap.add_argument("--sweep", type=int, default=0)
    ap.add_argument("--skip-single", action="store_true",
                    help="skip the one-rate runs (with --sweep)")
    args = ap.parse_args()
    data = nd.data.synthetic(n_train=args.n, n_test=args.test, dim=64, classes=10, seed=0)
    parts = nd.data.partition(data, agents=args.agents, scheme="iid", seed=0)
    g = nd.graphs.topology("erdos_renyi", args.agents, p=args.p, seed=0)
    w = nd.graphs.mixing(g, rule="metropolis")
    steps = range(0, args.steps + 1, args.steps // 10)
    t0 = time.perf_counter()
    src = lowrank.analytic_columns(data.x_train, data.x_test, hidden_layers=2)
    factor = lowrank.factorize(src, args.rank)
    print(f"factor rank {factor.rank} of N = {args.n}: {time.perf_counter() - t0:.1f} s",
          flush=True)
    runs = {"mse": lambda: lowrank.predict_lowrank(
        factor, data.y_train, parts.agent, w, 0.5, steps, y_test=data.y_test, form=args.form),
        "cross_entropy": lambda: predict_lowrank_ce(
            factor, data.y_train, parts.agent, w, 0.5, steps, y_test=data.y_test)}
    if args.networks:
        runs["cross_entropy, one random network"] = _random_run(args, data, parts, w, steps,
                                                                factor)
    if args.skip_single:
        runs = {}
    for name, run in runs.items():
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            traj = run()
            times.append(time.perf_counter() - t0)
        if hasattr(traj, "samples"):
            lo, hi = traj.band("test_loss", 0.05, 0.95)
            print(f"  {traj.samples} networks: expected final test loss "
                  f"{np.mean(traj.test_loss[-1]):.4f} (5-95 %: {np.mean(lo[-1]):.4f}-"
                  f"{np.mean(hi[-1]):.4f}); f0 = 0 network "
                  f"{np.mean(traj.mean_network.test_loss[-1]):.4f}", flush=True)
        print(f"{name:14s} form {traj.metadata['low_rank']['form']:8s} first {times[0]:6.1f} s,"
              f" second {times[1]:6.1f} s ({1e3 * times[1] / args.steps:.1f} ms/step incl. "
              f"records); final test loss {np.mean(traj.test_loss[-1]):.4f}, test acc "
              f"{np.mean(traj.test_acc[-1]):.3f}", flush=True)
    if args.sweep:
        _sweep(args, data, parts, w, steps, factor)


def _sweep(args, data, parts, w, steps, factor) -> None:
    """``--sweep R`` rates: one pass against one run per rate (each timed twice)."""
    rates = list(0.5 * np.linspace(0.1, 0.95, args.sweep))
    kw = dict(y_test=data.y_test, reference=False)
    times = {}
    for name, run in (("one pass", lambda: predict_lowrank_ce_sweep(
            factor, data.y_train, parts.agent, w, rates, steps, **kw)),
            ("one pass, training records at the last record (ntkdyn check)",
             lambda: predict_lowrank_ce_sweep(factor, data.y_train, parts.agent, w, rates,
                                              steps, train_records="final", **kw)),
            ("one run per rate", lambda: [predict_lowrank_ce(
                factor, data.y_train, parts.agent, w, lr, steps, **kw) for lr in rates])):
        for rep in range(2):
            t0 = time.perf_counter()
            trajs = run()
            times[name, rep] = time.perf_counter() - t0
        times[name] = trajs
        print(f"cross-entropy {args.sweep}-rate sweep, {name}: first "
              f"{times[name, 0]:.1f} s, second {times[name, 1]:.1f} s", flush=True)
    diff = max(float(np.max(np.abs(a.test_loss - b.test_loss)))
               for a, b in zip(times["one pass"], times["one run per rate"], strict=True))
    ratio = times["one run per rate", 1] / times["one pass", 1]
    final = times["one run per rate", 1] / times[
        "one pass, training records at the last record (ntkdyn check)", 1]
    print(f"  one run per rate / one pass: {ratio:.2f}x, / one pass with the training "
          f"records at the last record: {final:.2f}x (second calls); largest test-loss "
          f"difference {diff:.1e}", flush=True)


def _random_run(args, data, parts, w, steps, factor):
    """Draw ``--networks`` networks' ``f_0`` (``K`` columns each) from the NNGP factor of
    the same rank on train + test (time printed); the run on ``factor`` as a callable."""
    import dataclasses

    from ntkdyn.lowrank.networks import nngp_draws

    k = data.y_train.shape[1]
    t0 = time.perf_counter()
    nngp = lowrank.analytic_columns(np.concatenate([data.x_train, data.x_test]),
                                    hidden_layers=2, kernel="nngp")
    draws, _ = nngp_draws(nngp, args.n, args.networks * k, 0, rank=args.rank)
    draws = dataclasses.replace(draws, outputs=k)
    print(f"NNGP factor and {args.networks} x {k} draws: {time.perf_counter() - t0:.1f} s",
          flush=True)
    return lambda: predict_random_lowrank_ce(factor, draws, data.y_train, parts.agent, w,
                                             0.5, steps, y_test=data.y_test)


if __name__ == "__main__":
    main()
