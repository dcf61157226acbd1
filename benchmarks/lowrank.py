"""Benchmark of the low-rank path (issue 17, "Size XL-data").

Usage::

    python benchmarks/lowrank.py [--n-train 60000 --n-test 10000 --agents 100 ...]
                                 [--exact-n 4096] [--ranks 64,128,256,512,1024] [--json out]

Defaults are the XL-data configuration: N = 60,000 training and 10,000 test samples with
MNIST's shape (784 dims, K = 10 classes; synthetic: ``--latent`` dims of class structure
mapped linearly into 784 dims plus isotropic noise, since nothing is downloaded),
Q = 100 agents (equal iid shards), Erdos-Renyi p = 0.05 with Metropolis weights, the
analytic NTK of a depth-2 width-1024 ReLU MLP (``hidden_layers=2``, W_std 1.4, b_std 0.1),
DGD at ``--lr`` 0.5, 1,000 steps, 50 records, rank chosen by ``tol=1e-3``
(capped by ``--max-rank``).  Measured:

* factorisation s (landmark columns of the analytic kernel, eigen-rotation), rank, the
  a-priori error estimate and whether ``tol`` was reached;
* prediction s (all steps and records) and the time per step, against the floor of the low
  rank step on this machine: per step, feature form, ``8 N r K`` flops (two passes over the
  features, the centralised reference riding along) and ``2 N r 8`` bytes read; Gram form
  (``Q r <= 2 N``, the XL default) ``2 (Q + 1) r^2 K + 2 Q^2 r K`` flops and ``Q r^2 8``
  bytes; the machine's gemm
  GFLOP/s and read GB/s are measured here (``np.matmul`` 2048^3, ``np.sum`` over 512 MiB);
* peak RSS (``ru_maxrss``);
* accuracy against the exact path on the first ``--exact-n`` training samples (and a
  quarter as many test samples), same agents / graph / rate / steps: relative error of the
  network-mean test loss and of ``param_dist`` over the trajectory, against the rank.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings

import numpy as np


def make_data(n: int, m: int, dim: int, k: int, latent: int, seed: int = 0):
    """``x = z A / sqrt(latent) + 0.3 e``, ``z = mu_label + N(0, I_latent)``, rows scaled
    to ``|x|^2 = dim``; ``latent = 0``: isotropic Gaussian mixture in ``dim`` dims."""
    rng = np.random.default_rng(seed)
    width = latent or dim
    means = rng.standard_normal((k, width))
    means *= 2.0 / np.linalg.norm(means, axis=1, keepdims=True)
    a = rng.standard_normal((width, dim)) / np.sqrt(width) if latent else None
    out = []
    for count in (n, m):
        labels = rng.integers(0, k, count)
        z = means[labels] + rng.standard_normal((count, width))
        x = z @ a + 0.3 * rng.standard_normal((count, dim)) if latent else z
        x *= np.sqrt(dim) / np.linalg.norm(x, axis=1, keepdims=True)
        out += [x, np.eye(k)[labels]]
    return out


def machine_floor(threads: int) -> dict:
    a = np.random.default_rng(0).standard_normal((2048, 2048))
    a @ a
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    gflops = 3 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9
    big = np.ones(64 * 2**20)
    big.sum()
    t = time.perf_counter()
    for _ in range(3):
        big.sum()
    gbs = 3 * big.nbytes / (time.perf_counter() - t) / 1e9
    return {"gemm_gflops": round(gflops, 1), "read_gbs": round(gbs, 1), "threads": threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--p", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--records", type=int, default=50)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-rank", type=int, default=1024)
    p.add_argument("--acc-rows", type=int, default=10000)
    p.add_argument("--exact-n", type=int, default=4096, help="0: skip the accuracy table")
    p.add_argument("--ranks", default="64,128,256,512,1024")
    p.add_argument("--skip-xl", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn import lowrank
    from ntkdyn.kernels import analytic_ntk

    warnings.simplefilter("ignore", RuntimeWarning)
    threads = os.cpu_count()
    result = {"args": vars(args), "machine": machine_floor(threads),
              "load_average": os.getloadavg()}
    print(f"machine: {result['machine']}, load average {result['load_average']}", flush=True)
    x, y, xt, yt = make_data(args.n_train, args.n_test, args.dim, args.classes, args.latent)
    q = args.agents
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", q, p=args.p, seed=0),
                         rule="metropolis")
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    kk = args.classes

    if not args.skip_xl:
        n, m = args.n_train, args.n_test
        agent = np.random.default_rng(1).permutation(n) % q
        counts = np.bincount(agent, minlength=q)
        source = lowrank.analytic_columns(x, xt, hidden_layers=2)
        scale = lowrank.error_scale(np.full(q, args.lr), counts, args.steps, "dgd")
        t0 = time.perf_counter()
        factor = lowrank.factorize(source, None, target_norm=args.tol / scale,
                                   max_rank=args.max_rank)
        t_factor = time.perf_counter() - t0
        print(f"factor: rank {factor.rank} ({len(factor.landmarks)} landmark columns) in "
              f"{t_factor:.1f} s", flush=True)
        t0 = time.perf_counter()
        traj = lowrank.predict_lowrank(factor, y, agent, w, args.lr, steps, "dgd", y_test=yt,
                                       acc_rows=args.acc_rows)
        t_pred = time.perf_counter() - t0
        low = traj.metadata["low_rank"]
        # time per step: warm calls with 0 and S steps between two records
        s = max(10, args.steps // 10)
        call = dict(y_test=yt, acc_rows=args.acc_rows)
        lowrank.predict_lowrank(factor, y, agent, w, args.lr, [0, 1], "dgd", **call)  # compile
        t0 = time.perf_counter()
        lowrank.predict_lowrank(factor, y, agent, w, args.lr, [0, 0], "dgd", y_test=yt,
                                acc_rows=args.acc_rows)
        t_rec = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowrank.predict_lowrank(factor, y, agent, w, args.lr, [0, s], "dgd", y_test=yt,
                                acc_rows=args.acc_rows)
        per_step = (time.perf_counter() - t0 - t_rec) / s
        r = factor.rank
        form = low.get("form", "features")
        if form == "gram":  # (Q + 1) r x r Gram products and the mixing; Q r^2 numbers read
            flops, nbytes = 2 * (q + 1) * r * r * kk + 2 * q * q * r * kk, q * r * r * 8
        else:  # two passes over the features, the centralised reference riding along
            flops, nbytes = 8 * n * r * kk, 2 * n * r * 8
        floor = max(flops / (result["machine"]["gemm_gflops"] * 1e9),
                    nbytes / (result["machine"]["read_gbs"] * 1e9))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        xl = {"n_train": n, "n_test": m, "rank": r, "form": form,
              "landmarks": int(len(factor.landmarks)),
              "factor_s": round(t_factor, 1), "predict_s": round(t_pred, 1),
              "total_s": round(t_factor + t_pred, 1), "per_step_ms": round(1e3 * per_step, 2),
              "floor_ms": round(1e3 * floor, 2), "peak_rss_gb": round(rss, 2),
              "error_estimate": low["error_estimate"], "tol_reached": low["error_estimate"]
              <= args.tol, "discarded_norm_bound": low["discarded_norm_bound"],
              "residual_trace_fraction": factor.residual_trace / factor.trace,
              "final_test_loss": float(traj.test_loss[-1].mean()),
              "final_test_acc": float(traj.test_acc[-1].mean()), "status": traj.status}
        result["xl"] = xl
        print(json.dumps(xl, indent=1), flush=True)

    if args.exact_n:
        n = args.exact_n
        m = max(1, n // 4)
        xs, ys, xts, yts = x[:n], y[:n], xt[:m], yt[:m]
        agent = np.arange(n) % q
        t0 = time.perf_counter()
        kern = analytic_ntk(xs, hidden_layers=2)
        kern_t = analytic_ntk(xts, xs, hidden_layers=2)
        t_k = time.perf_counter() - t0
        t0 = time.perf_counter()
        exact = nd.predict_from_kernels(kern, ys, agent, w, args.lr, steps, "dgd",
                                        kernel_test_train=kern_t, y_test=yts, reference=False)
        t_exact = time.perf_counter() - t0
        print(f"exact path N={n}: kernel {t_k:.1f} s, prediction {t_exact:.1f} s "
              f"({exact.status})", flush=True)
        src = lowrank.kernel_columns(kern, kern_t)
        rows = []
        ref_loss = exact.network_mean("test_loss")
        for r in [int(v) for v in args.ranks.split(",") if int(v) <= n]:
            t0 = time.perf_counter()
            fac = lowrank.factorize(src, r)
            lo = lowrank.predict_lowrank(fac, ys, agent, w, args.lr, steps, "dgd", y_test=yts,
                                         reference=False)
            dt = time.perf_counter() - t0
            t_ = min(len(lo.steps), len(exact.steps))
            tl = lo.network_mean("test_loss")[:t_]
            row = {"rank": r, "seconds": round(dt, 1),
                   "test_loss_rel": float(np.max(np.abs(tl - ref_loss[:t_]))
                                          / np.max(ref_loss[:t_])),
                   "param_dist_rel": float(np.max(np.abs(lo.param_dist[:t_]
                                                         - exact.param_dist[:t_]))
                                           / np.max(exact.param_dist[:t_])),
                   "train_loss_rel": float(np.max(np.abs(lo.train_loss[:t_]
                                                         - exact.train_loss[:t_]))
                                           / np.max(exact.train_loss[:t_])),
                   "test_acc_diff": float(np.max(np.abs(lo.test_acc[:t_]
                                                        - exact.test_acc[:t_]))),
                   "estimate": lo.metadata["low_rank"]["error_estimate"]}
            rows.append(row)
            print(row, flush=True)
        result["accuracy"] = {"n_train": n, "n_test": m, "exact_s": round(t_exact, 1),
                              "rows": rows}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
