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

``--accuracy`` runs only the accuracy-vs-rank study at N >= 8,192 (item 1 of issue 17's
follow-up): ``--n-train`` training and ``--n-test`` test samples of the same synthetic
data (seed 0), ``--agents`` agents (32) on an Erdos-Renyi graph (``--p``, Metropolis), the
analytic NTK, DGD; the exact path once, then the low-rank path (factorisation from the
analytic-kernel columns included) at each of ``--ranks`` and at ``rank="auto"`` for each of
``--tols`` (``max_rank`` ``--max-rank``).  Per run: the *pointwise* relative error
(``max_t |low - exact| / |exact|``) of the network-mean train loss, test loss and test
accuracy, the a-priori ``error_estimate`` of ``metadata["low_rank"]`` (and its value
before the cap of 2), seconds, and the peak resident set of the run's own process (each
run is a child process; the data alone are about ``rss_before_gb`` of it)::

    python benchmarks/lowrank.py --accuracy --n-train 8192 --n-test 2048 --agents 32 \
        --p 0.2 --steps 300 --records 30 --ranks 64,128,256,512,1024 --tols 0.5,0.1

``--f0 mean`` / ``--f0 random`` times the XL configuration as a user runs it today,
through ``nd.predict(arch, parts, W, ..., kernel="analytic", rank="auto", tol=...,
max_rank=...)`` (the public entry point; ``f0="random"``, its default, predicts one random
network from ``--samples`` NNGP draws, ``None``: the default count): factor seconds
(``metadata["low_rank"]["seconds_total"]``) and the rest of the call, peak RSS, the rank,
the probe-row ``error_estimate`` and the trace estimate ``error_bound_trace``, the final
network-mean test loss (and its 5-95 % band over initialisations for ``random``).  Without
``--f0`` the XL run calls ``lowrank.factorize`` / ``predict_lowrank`` directly (trace stopping
rule, ``acc_rows``), as the figures measured before the probe-row estimate.

``--case emp=WIDTH --n-train N --json out.json`` times the rank-``--emp-rank`` factor of
the *empirical* NTK of a depth-2 width-WIDTH MLP from column blocks
(``lowrank.empirical_columns``) and reports its peak resident set.
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


def _pointwise(low, exact) -> float:
    """``max_t |low - exact| / |exact|`` over the common records."""
    t = min(len(low), len(exact))
    return float(np.max(np.abs(low[:t] - exact[:t]) / np.abs(exact[:t])))


def run_case(args, x, y, xt, yt, w) -> dict:
    """One run of the accuracy study (``--case exact``, ``rank=R`` or ``tol=T``), in its
    own process so that its peak resident set is its own: seconds, ``VmHWM`` and the
    resident set before the run (data only), the network means, the low-rank metadata."""
    import ntkdyn as nd
    from ntkdyn import lowrank
    from ntkdyn.kernels import analytic_ntk

    n, q = len(x), args.agents
    agent = np.arange(n) % q
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    with open("/proc/self/statm") as fh:
        before = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    kind, _, val = args.case.partition("=")
    out = {"case": args.case}
    t0 = time.perf_counter()
    if kind == "exact":
        kern = analytic_ntk(x, hidden_layers=2)
        kern_t = analytic_ntk(xt, x, hidden_layers=2)
        out["kernel_s"] = round(time.perf_counter() - t0, 1)
        traj = nd.predict_from_kernels(kern, y, agent, w, args.lr, steps, "dgd",
                                       kernel_test_train=kern_t, y_test=yt, reference=False,
                                       record_outputs=bool(args.outputs_dir))
        if args.outputs_dir:
            np.save(os.path.join(args.outputs_dir, "exact.npy"), traj.train_outputs)
    else:
        call = (dict(rank=int(val)) if kind == "rank"
                else dict(rank="auto", tol=float(val), max_rank=args.max_rank))
        src = lowrank.analytic_columns(x, xt, hidden_layers=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            traj = lowrank.predict(src, y, agent, w, args.lr, steps, "dgd", y_test=yt,
                                   reference=False, record_outputs=bool(args.outputs_dir),
                                   **call)
        low = traj.metadata["low_rank"]
        scale = lowrank.error_scale(np.full(q, args.lr), np.bincount(agent), args.steps, "dgd")
        out.update(rank=low["rank"], estimate=low["error_estimate"],
                   estimate_uncapped=float(low.get("error_estimate_uncapped",
                                                   low["error_estimate"])),
                   estimate_kind=low.get("error_estimate_kind"),
                   trace_estimate_uncapped=float(scale * low["discarded_norm_bound"]),
                   landmarks=low["landmarks"], probe_columns=low.get("probe_columns"),
                   seconds_probe=low.get("seconds_probe"),
                   factor_seconds=low.get("seconds_total"),
                   tol_reached=low.get("tol_reached"),
                   warning=str(caught[-1].message) if caught else None)
        if args.outputs_dir:  # max_{t,q} ||f_q - f~_q|| / ||f_0 - Y|| (f_0 = 0 here)
            ex = np.load(os.path.join(args.outputs_dir, "exact.npy"), mmap_mode="r")
            t = min(len(ex), len(traj.train_outputs))
            diff = (np.asarray(ex[:t]) - traj.train_outputs[:t]).reshape(t, q, -1)
            out["output_error"] = float(np.max(np.linalg.norm(diff, axis=-1))
                                        / np.linalg.norm(y))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    with open("/proc/self/status") as fh:  # VmHWM: this process's own peak (ru_maxrss is
        hwm = [ln for ln in fh if ln.startswith("VmHWM")][0]  # kept across exec on Linux)
    out.update(status=traj.status, rss_before_gb=round(before, 2),
               peak_rss_gb=round(int(hwm.split()[1]) / 2**20, 2))
    for k in ("train_loss", "test_loss", "test_acc"):
        out[k] = traj.network_mean(k).tolist()
    return out


def empirical_case(args, x, xt) -> dict:
    """``--case emp=WIDTH``: the rank-``--emp-rank`` factor of the traced empirical NTK of a
    depth-2 width-WIDTH MLP (``lowrank.empirical_columns``: layerwise, no Jacobian) on
    ``--n-train`` samples and ``--n-test`` test samples; seconds and ``VmHWM``."""
    import ntkdyn as nd
    from ntkdyn import lowrank

    width = int(args.case.partition("=")[2])
    model = nd.models.MLP(hidden=(width, width), out=args.classes)
    params = nd.models.init_params(model, x.shape[1], seed=0)
    t0 = time.perf_counter()
    src = lowrank.empirical_columns(model, params, x, xt)
    diag = src.diagonal()
    t_diag = time.perf_counter() - t0
    fac = lowrank.factorize(src, args.emp_rank)
    with open("/proc/self/status") as fh:
        hwm = [ln for ln in fh if ln.startswith("VmHWM")][0]
    return {"case": args.case, "n_train": len(x), "n_test": len(xt), "width": width,
            "params": model.num_params(x.shape[1]), "rank": fac.rank,
            "landmarks": int(len(fac.landmarks)), "diagonal_s": round(t_diag, 1),
            "seconds": round(time.perf_counter() - t0, 1),
            "residual_trace_fraction": fac.residual_trace / float(diag.sum()),
            "peak_rss_gb": round(int(hwm.split()[1]) / 2**20, 2)}


def user_case(args, x, y, xt, yt, w) -> dict:
    """``--f0 mean|random``: the XL configuration through ``nd.predict`` (rank ``"auto"``),
    agents as the low-level XL run (``permutation(N) % Q``, seed 1); seconds, peak RSS,
    the low-rank metadata and the final test loss (with its 5-95 % band for ``random``)."""
    import ntkdyn as nd

    q = args.agents
    agent = np.random.default_rng(1).permutation(len(x)) % q
    data = nd.data.from_arrays(x, y.argmax(1), xt, yt.argmax(1), standardise=False)
    parts = nd.data.partition(data, q, "given", agent=agent)
    arch = nd.models.MLP(hidden=(1024, 1024), out=args.classes)
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    t0 = time.perf_counter()
    traj = nd.predict(arch, parts, w, lr=args.lr, steps=steps, kernel="analytic",
                      rank="auto", tol=args.tol, max_rank=args.max_rank, f0=args.f0,
                      samples=args.samples if args.f0 == "random" else None,
                      progress=args.progress)
    total = time.perf_counter() - t0
    low = traj.metadata["low_rank"]
    fac_s = float(low.get("seconds_total", 0.0))
    draws = low.get("f0_draws") or {}
    nngp_s = float(draws.get("seconds") or 0.0)
    out = {"f0": args.f0, "n_train": len(x), "n_test": len(xt), "rank": low["rank"],
           "landmarks": low.get("landmarks"), "form": low.get("form"),
           "factor_s": round(fac_s, 1), "nngp_factor_s": round(nngp_s, 1),
           "predict_s": round(total - fac_s - nngp_s, 1), "total_s": round(total, 1),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "error_estimate": low["error_estimate"],
           "error_estimate_kind": low.get("error_estimate_kind"),
           "error_bound_trace": low.get("error_bound_trace"),
           "probe_columns": low.get("probe_columns"), "tol_reached": low.get("tol_reached"),
           "samples": draws.get("samples"), "status": traj.status,
           "final_test_loss": float(traj.network_mean("test_loss")[-1]),
           "final_test_acc": float(traj.network_mean("test_acc")[-1])}
    if args.f0 == "random":
        lo, hi = (np.asarray(b) for b in traj.band("test_loss", 0.05, 0.95, over="init"))
        lo, hi = (b.mean(axis=1) if b.ndim == 2 else b for b in (lo, hi))
        out["final_test_loss_band"] = [float(lo[-1]), float(hi[-1])]
        mean_net = getattr(traj, "mean_network", None)
        if mean_net is not None:
            out["mean_network_final_test_loss"] = float(
                mean_net.network_mean("test_loss")[-1])
    return out


def accuracy_study(args, argv) -> dict:
    """Exact path, then the low-rank path at each rank and each ``tol``, each in a child
    process (:func:`run_case`); the pointwise relative errors against the exact path."""
    import subprocess
    import tempfile

    def child(case: str) -> dict:
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            subprocess.run([sys.executable, __file__, *argv, "--case", case, "--json",
                            fh.name], check=True)
            return json.load(open(fh.name))["case_result"]

    exact = child("exact")
    print(f"exact: kernels {exact['kernel_s']} s, total {exact['seconds']} s, peak RSS "
          f"{exact['peak_rss_gb']} GB ({exact['status']})", flush=True)
    cases = [f"rank={v}" for v in args.ranks.split(",") if v and int(v) <= args.n_train]
    cases += [f"tol={v}" for v in args.tols.split(",") if v]
    rows = []
    for case in cases:
        row = child(case)
        for k in ("train_loss", "test_loss", "test_acc"):
            row[k + "_rel"] = _pointwise(np.array(row[k]), np.array(exact[k]))
        t = min(len(row["test_acc"]), len(exact["test_acc"]))
        row["test_acc_absdiff"] = float(np.max(np.abs(np.array(row["test_acc"][:t])
                                                      - np.array(exact["test_acc"][:t]))))
        for k in ("train_loss", "test_loss", "test_acc"):
            del row[k]
        rows.append(row)
        print(row, flush=True)
    for k in ("train_loss", "test_loss", "test_acc"):
        del exact[k]
    return {"exact": exact, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--topology", choices=("erdos_renyi", "ring"), default="erdos_renyi",
                   help="the agents' graph (Metropolis weights); --p is Erdos-Renyi's")
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
    p.add_argument("--accuracy", action="store_true",
                   help="only the accuracy-vs-rank study against the exact path")
    p.add_argument("--tols", default="0.5,0.1", help="--accuracy: tol values of rank='auto'")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--emp-rank", type=int, default=512,
                   help="--case emp=WIDTH: rank of the empirical-kernel factor")
    p.add_argument("--json", default=None)
    p.add_argument("--f0", choices=("mean", "random"), default=None,
                   help="XL run through nd.predict (rank='auto') with this f0")
    p.add_argument("--progress", action="store_true", help="--f0: nd.predict's progress bar")
    p.add_argument("--samples", type=int, default=None,
                   help="--f0 random: sampled networks (None: nd.predict's default)")
    p.add_argument("--outputs-dir", default=None,
                   help="--accuracy: keep the exact training outputs there and report each "
                        "run's output_error, max_{t,q} ||f_q - f~_q|| / ||Y|| (the quantity "
                        "error_estimate estimates)")
    args = p.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn import lowrank
    from ntkdyn.kernels import analytic_ntk

    warnings.simplefilter("ignore", RuntimeWarning)
    threads = os.cpu_count()
    result = {"args": vars(args), "load_average": os.getloadavg(),  # no floor in a child
              "machine": {} if args.case else machine_floor(threads)}
    if not args.case:
        print(f"machine: {result['machine']}, load average {result['load_average']}",
              flush=True)
    x, y, xt, yt = make_data(args.n_train, args.n_test, args.dim, args.classes, args.latent)
    q = args.agents
    graph = (nd.graphs.topology("ring", q) if args.topology == "ring" else
             nd.graphs.topology("erdos_renyi", q, p=args.p, seed=0))
    w = nd.graphs.mixing(graph, rule="metropolis")
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    kk = args.classes
    if args.case:
        run = (empirical_case(args, x, xt) if args.case.startswith("emp=")
               else run_case(args, x, y, xt, yt, w))
        with open(args.json, "w") as fh:
            json.dump({"case_result": run}, fh, default=float)
        return 0
    if args.accuracy:
        child_argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--accuracy"]
        if "--json" in child_argv:
            i = child_argv.index("--json")
            del child_argv[i:i + 2]
        result["accuracy_study"] = accuracy_study(args, child_argv)
        args.skip_xl, args.exact_n = True, 0

    if args.f0 and not args.skip_xl:
        result["xl_user"] = user_case(args, x, y, xt, yt, w)
        print(json.dumps(result["xl_user"], indent=1), flush=True)
        args.skip_xl = True

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
