"""Benchmark of the kernel-space solver (DESIGN.md section 4, "Where the time goes").

Usage::

    python benchmarks/solver.py [--sizes S,M,L] [--json out.json]

For every size: synthetic Gaussian-mixture data (dim 64, 10 classes), an iid
partition over ``Q`` agents, a ring with Metropolis weights, the analytic NTK
of ``MLP(hidden=(1024, 1024), out=10)``, DGD at half the sufficient stability
bound, ``steps = linspace(0, T, 101)`` (100 recorded intervals), ``N/4`` test
samples.  Measured:

* kernel s: ``ntkdyn.build_problem`` (analytic kernels, train and test);
* first-call s / warm s: ``ntkdyn.dynamics.run.run_problem`` (the first call in a
  fresh process includes JIT compilation; the second is warm);
* peak RSS: ``VmHWM`` of the process (each size runs in its own subprocess, so
  the figure is that size's own peak, taken before the dense reference);
* GB/s achieved: ``T * N^2 * 8 bytes / warm s`` (one read of the training
  kernel per step; the records add ~1%), compared with this machine's read
  bandwidth measured by ``np.sum`` over a 1 GiB array (best of 1 thread and one
  thread per core);
* sweep ratio: a 10-rate sweep (warm; compiled beforehand by a 25-step call)
  over one warm prediction (wall and process CPU time), and the same sweep with
  ``kernel_dtype="float32"`` (float32 kernel products, float64 state) with the largest
  relative change of any real-valued metric against the float64 sweep;
* dense ratio (size S only): a plain numpy reference that builds the stacked
  ``(Q N) x (Q N)`` DGD operator explicitly and iterates it, over one warm
  prediction; its recorded train losses are checked against the solver's;
* float32 kernel, no reference: the same prediction with ``kernel_dtype="float32"``
  and ``reference=False`` (warm), and its largest test-loss difference from the
  float64 prediction relative to the largest test loss;
* reference: the default (the centralised reference diagonal in its eigenbasis, one
  ``eigh`` per problem, timed separately as "eigh s") side by side with the previous
  method (the reference carried along every kernel pass), both warm through
  ``ntkdyn.dynamics.solver.evolve``, and the largest relative difference of the central metrics;
* numpy loop: a plain numpy DGD loop over agents on the same problem
  (``NUMPY_STEPS`` steps, extrapolated to ``T``), and its ratio to the warm default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIZES = {  # Q agents, N training samples, K outputs, T steps
    "S": dict(q=8, n=512, k=10, steps=2_000),
    "M": dict(q=16, n=2_048, k=10, steps=5_000),
    "L": dict(q=32, n=8_192, k=10, steps=10_000),
}
RECORDS = 100
SWEEP_RATES = 10
AGREEMENT_TOL = 1e-8
NUMPY_STEPS = 200


# --------------------------------------------------------------------------- machine
def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    import jax

    return {"cpu": _cpu_model(), "cores": cores, "ram_gb": round(mem_gb, 1),
            "python": platform.python_version(), "jax": jax.__version__,
            "jax_backend": jax.default_backend(), "numpy": np.__version__}


def memory_bandwidth(gib: float = 1.0, repeats: int = 3) -> dict:
    """Read bandwidth (``np.sum`` of a ``gib`` GiB array) and copy bandwidth, in GB/s."""
    a = np.ones(int(gib * 2**30) // 8)
    a.sum()
    out = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    for threads in sorted({1, cores}):
        parts = np.array_split(a, threads)
        with ThreadPoolExecutor(threads) as ex:
            best = min(_timed(lambda ex=ex, parts=parts: list(ex.map(np.sum, parts)))
                       for _ in range(repeats))
        out[f"read_{threads}thread_gbs"] = a.nbytes / best / 1e9
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    out["copy_gbs"] = 2 * a.nbytes / best / 1e9  # read + write (write-allocate not counted)
    out["reference_gbs"] = max(v for k, v in out.items() if k.startswith("read_"))
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- dense reference
def dense_reference(theta, y, f0, agent, w, lr, steps) -> np.ndarray:
    """Train losses ``(len(steps), Q)`` of DGD from the explicit stacked operator.

    State ``x`` is ``(Q N, K)``, agent ``q``'s block ``alpha_q`` (``theta_q -
    theta_0 = J^T alpha_q``).  One step ``x <- A x + c`` with
    ``A = kron(W, I_N) - lr blockdiag_q(E_q Theta[S_q, :] / N_q)`` and
    ``c_q = -lr E_q (f0 - Y)[S_q] / N_q``; outputs ``f0 + Theta alpha_q``; loss
    ``1/(2N) sum_i ||f_i - y_i||^2`` over the pooled training set.
    """
    n, k = y.shape
    q_count = w.shape[0]
    a = np.kron(w, np.eye(n))
    c = np.zeros((q_count * n, k))
    for q in range(q_count):
        s_q = np.flatnonzero(agent == q)
        rows = q * n + s_q
        a[rows, q * n:(q + 1) * n] -= lr * theta[s_q, :] / len(s_q)
        c[rows] = -lr * (f0 - y)[s_q] / len(s_q)
    x = np.zeros((q_count * n, k))
    wanted = set(int(s) for s in steps)
    losses = {}
    for t in range(int(steps[-1]) + 1):
        if t in wanted:
            out = f0[None] + np.einsum("ij,qjk->qik", theta, x.reshape(q_count, n, k))
            losses[t] = 0.5 * np.sum((out - y[None]) ** 2, axis=(1, 2)) / n
        if t < steps[-1]:
            x = a @ x + c
    return np.stack([losses[int(s)] for s in steps])


def numpy_loop(problem, lr: float, steps: int) -> tuple[float, np.ndarray]:
    """Seconds for ``steps`` DGD steps as a plain numpy loop over agents, and the state.

    State ``alpha`` ``(Q, N, K)`` (traced kernel, samples sorted by agent); one step:
    ``r_q = Theta[S_q, :] alpha_q + (f_0 - Y)[S_q]``, ``alpha <- W alpha``, then
    ``alpha_q[S_q] -= lr r_q / N_q``.
    """
    kern, res, w = problem.kernel, problem.residual0, problem.mixing
    off = problem.offsets
    q_count = problem.num_agents
    rows = [kern[off[q]:off[q + 1]] for q in range(q_count)]
    alpha = np.zeros((q_count,) + res.shape)
    tic = time.perf_counter()
    for _ in range(steps):
        r = [rows[q] @ alpha[q] + res[off[q]:off[q + 1]] for q in range(q_count)]
        alpha = np.tensordot(w, alpha, axes=1)
        for q in range(q_count):
            alpha[q, off[q]:off[q + 1]] -= lr * r[q] / (off[q + 1] - off[q])
    return time.perf_counter() - tic, alpha


def metric_change(trajs, refs) -> tuple[float, int]:
    """Largest relative change ``max|a - b| / max|b|`` over every real-valued metric of
    trajectories ``trajs`` against ``refs`` (accuracies excluded), and the number of
    accuracy entries that differ."""
    from ntkdyn.trajectory import METRICS

    worst, flips = 0.0, 0
    for a, b in zip(trajs, refs, strict=True):
        for m in METRICS:
            va, vb = getattr(a, m, None), getattr(b, m, None)
            if m in ("steps", "lr") or not isinstance(vb, np.ndarray) or vb.dtype.kind != "f":
                continue
            if m.endswith("_acc"):
                flips += int(np.sum(va != vb))
                continue
            worst = max(worst, float(np.max(np.abs(va - vb)) / max(np.max(np.abs(vb)), 1e-300)))
    return worst, flips


# --------------------------------------------------------------------------- one size
def run_size(name: str, steps_override: int | None = None) -> dict:
    import ntkdyn
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.dynamics.stability import sufficient_bound

    cfg = SIZES[name]
    q, n, k, t_max = cfg["q"], cfg["n"], cfg["k"], steps_override or cfg["steps"]
    res = {"size": name, "Q": q, "N": n, "K": k, "steps": t_max, "n_test": n // 4,
           "records": RECORDS, "load_start": os.getloadavg()[0]}
    data = ntkdyn.data.synthetic(n_train=n, n_test=n // 4, dim=64, classes=k, seed=0)
    parts = ntkdyn.data.partition(data, agents=q, scheme="iid", seed=0)
    w = ntkdyn.graphs.mixing(ntkdyn.graphs.topology("ring", q))
    arch = ntkdyn.models.MLP(hidden=(1024, 1024), out=k)

    t = time.perf_counter()
    problem = ntkdyn.build_problem(arch, parts, w)
    res["kernel_s"] = time.perf_counter() - t
    _log(f"{name}: kernel {res['kernel_s']:.2f} s")

    bound = sufficient_bound(problem, "dgd")
    lr = 0.5 * bound
    res["lr_bound"], res["lr"] = bound, lr
    records = max(10, RECORDS * t_max // cfg["steps"])  # the same steps per record
    res["records"] = records
    steps = np.linspace(0, t_max, records + 1).astype(int)

    t = time.perf_counter()
    run_problem(problem, "dgd", [lr], steps)
    res["first_s"] = time.perf_counter() - t
    _log(f"{name}: first call {res['first_s']:.2f} s")
    t, c = time.perf_counter(), time.process_time()
    traj = run_problem(problem, "dgd", [lr], steps)[0]
    res["warm_s"] = time.perf_counter() - t
    res["warm_cpu_s"] = time.process_time() - c
    _log(f"{name}: warm call {res['warm_s']:.2f} s (process CPU {res['warm_cpu_s']:.2f} s, "
         f"load average {os.getloadavg()[0]:.1f})")
    res["status"] = traj.status

    # the lean options: float32 kernel (state in float64), no centralised reference slot
    lean = dict(reference=False, kernel_dtype="float32")
    run_problem(problem, "dgd", [lr], steps, **lean)  # compile
    t = time.perf_counter()
    lean_traj = run_problem(problem, "dgd", [lr], steps, **lean)[0]
    res["lean_s"] = time.perf_counter() - t
    res["lean_error"] = float(np.max(np.abs(lean_traj.test_loss - traj.test_loss))
                              / np.max(np.abs(traj.test_loss)))
    _log(f"{name}: float32 kernel, no reference: {res['lean_s']:.2f} s (test loss within "
         f"{res['lean_error']:.1e} of float64)")

    # the reference: eigenbasis (default) against the previous method (carried), same run
    from ntkdyn.algorithms import get_algorithm
    from ntkdyn.dynamics import solver

    solver._BASIS_CACHE.clear()
    t = time.perf_counter()
    solver.reference_basis(problem)
    res["eigh_s"] = time.perf_counter() - t
    dgd, lrs = get_algorithm("dgd"), np.full((1, q), lr)
    timed_ref = {}
    for how in ("eigen", "carried"):
        solver.evolve(problem, dgd, lrs, steps[:2], reference=how)  # compile
        t = time.perf_counter()
        timed_ref[how] = solver.evolve(problem, dgd, lrs, steps, reference=how)
        res[f"reference_{how}_s"] = time.perf_counter() - t
    res["reference_difference"] = max(
        float(np.max(np.abs(timed_ref["eigen"][key][:, q] - timed_ref["carried"][key][:, q]))
              / max(np.max(np.abs(timed_ref["carried"][key][:, q])), 1e-300))
        for key in ("train_loss", "test_loss", "param_dist"))
    res["reference_difference"] = max(res["reference_difference"], float(
        np.max(np.abs(timed_ref["eigen"]["central_dist"] - timed_ref["carried"]["central_dist"]))
        / np.max(np.abs(timed_ref["carried"]["central_dist"]))))
    _log(f"{name}: reference in the eigenbasis {res['reference_eigen_s']:.2f} s (+ eigh "
         f"{res['eigh_s']:.2f} s once), carried {res['reference_carried_s']:.2f} s; central "
         f"metrics differ by {res['reference_difference']:.1e} (relative)")

    n_np = min(NUMPY_STEPS, t_max)
    secs, alpha = numpy_loop(problem, lr, n_np)
    res["numpy_s"] = secs * t_max / n_np
    res["numpy_ratio"] = res["numpy_s"] / res["warm_s"]
    check = solver.evolve(problem, dgd, lrs, np.array([n_np]), central=False)
    out = problem.f0_train + np.einsum("ij,qjk->qik", problem.kernel, alpha)
    np_loss = 0.5 * np.sum((out - problem.y_train[None]) ** 2, axis=(1, 2)) / n
    res["numpy_agreement"] = float(np.max(np.abs(np_loss - check["train_loss"][0, :, 0]))
                                   / np.max(np.abs(np_loss)))
    _log(f"{name}: numpy loop over agents {secs:.2f} s for {n_np} steps -> "
         f"{res['numpy_s']:.1f} s for {t_max} (solver default {res['numpy_ratio']:.1f}x "
         f"faster; train losses agree to {res['numpy_agreement']:.1e})")

    rates = list(bound * np.linspace(0.05, 0.95, SWEEP_RATES))
    sweeps = {}
    for tag, kw in (("", {}), ("_f32", {"kernel_dtype": "float32"})):
        run_problem(problem, "dgd", rates, np.arange(25), **kw)  # compile the 10-rate chunk
        t, c = time.perf_counter(), time.process_time()
        sweeps[tag] = run_problem(problem, "dgd", rates, steps, **kw)
        res[f"sweep{tag}_s"] = time.perf_counter() - t
        res[f"sweep{tag}_cpu_s"] = time.process_time() - c
        res[f"sweep{tag}_ratio"] = res[f"sweep{tag}_s"] / res["warm_s"]
        res[f"sweep{tag}_cpu_ratio"] = res[f"sweep{tag}_cpu_s"] / res["warm_cpu_s"]
    res["sweep_f32_change"], res["sweep_f32_acc_changes"] = metric_change(sweeps["_f32"],
                                                                          sweeps[""])
    _log(f"{name}: 10-rate sweep, float32 kernel products: {res['sweep_f32_s']:.2f} s "
         f"(ratio {res['sweep_f32_ratio']:.2f}, CPU-time ratio {res['sweep_f32_cpu_ratio']:.2f}"
         f"; largest relative change of a metric {res['sweep_f32_change']:.1e}, accuracy "
         f"entries changed {res['sweep_f32_acc_changes']})")
    res["load_end"] = os.getloadavg()[0]
    _log(f"{name}: 10-rate sweep {res['sweep_s']:.2f} s")

    res["peak_rss_gb"] = _proc_status_kb("VmHWM") * 1024 / 1e9
    res["kernel_bytes"] = problem.kernel.nbytes
    res["achieved_gbs"] = t_max * problem.kernel.nbytes / res["warm_s"] / 1e9

    if name == "S":
        theta = np.asarray(arch.kernel(parts.dataset.x_train))  # recomputed, unsorted path
        y = parts.dataset.y_train
        t = time.perf_counter()
        ref = dense_reference(theta, y, np.zeros_like(y), parts.agent, w, lr, steps)
        res["dense_s"] = time.perf_counter() - t
        res["dense_ratio"] = res["dense_s"] / res["warm_s"]
        res["dense_agreement"] = float(np.max(np.abs(traj.train_loss - ref))
                                       / np.max(np.abs(ref)))
        res["dense_agrees"] = res["dense_agreement"] < AGREEMENT_TOL
        _log(f"{name}: dense reference {res['dense_s']:.2f} s, train-loss agreement "
             f"{res['dense_agreement']:.2e} (relative)")
    return res


# --------------------------------------------------------------------------- report
def table(results: list[dict], bw: dict) -> str:
    head = ("| size | Q | N | K | steps | kernel s | eigh s | first-call s | warm s | peak RSS GB "
            "| GB/s achieved | % of measured bandwidth | carried reference s | numpy loop s "
            "(ratio) | sweep ratio | dense ratio "
            "| float32 kernel, no reference: s (test-loss rel. diff) |")
    lines = [head, "|" + "---|" * 17]
    for r in results:
        dense = f"{r['dense_ratio']:.1f}" if "dense_ratio" in r else "-"
        lines.append(
            f"| {r['size']} | {r['Q']} | {r['N']:,} | {r['K']} | {r['steps']:,} "
            f"| {r['kernel_s']:.2f} | {r['eigh_s']:.2f} | {r['first_s']:.2f} | {r['warm_s']:.2f} "
            f"| {r['peak_rss_gb']:.2f} | {r['achieved_gbs']:.1f} "
            f"| {100 * r['achieved_gbs'] / bw['reference_gbs']:.0f}% "
            f"| {r['reference_carried_s']:.2f} | {r['numpy_s']:.1f} ({r['numpy_ratio']:.1f}x) "
            f"| {r['sweep_ratio']:.2f} | {dense} | {r['lean_s']:.2f} ({r['lean_error']:.1e}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="S,M", help="comma-separated subset of S,M,L")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--steps", type=int, help="override every size's step count (on a busy "
                    "machine: the per-step figures and the ratios stay comparable)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one size in a fresh process
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        res = run_size(args.worker, args.steps)
        with open(args.worker_out, "w") as fh:
            json.dump(res, fh)
        return 0

    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"--sizes: unknown size(s) {bad}; expected a subset of {sorted(SIZES)}")
    info = machine()
    bw = memory_bandwidth()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM; "
          f"jax {info['jax']} ({info['jax_backend']}), numpy {info['numpy']}, "
          f"python {info['python']}")
    reads = ", ".join(f"{k.split('_')[1]} {v:.1f} GB/s" for k, v in bw.items()
                      if k.startswith("read_"))
    print(f"measured memory bandwidth (1 GiB, best of 3): read {reads}; copy "
          f"{bw['copy_gbs']:.1f} GB/s; reference = {bw['reference_gbs']:.1f} GB/s (best read)",
          flush=True)

    results = []
    for name in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "res.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name,
                   "--worker-out", out] + (["--steps", str(args.steps)] if args.steps else [])
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"size {name}: worker failed (exit {proc.returncode})", file=sys.stderr)
                return proc.returncode
            with open(out) as fh:
                results.append(json.load(fh))

    print()
    print(table(results, bw))
    print()
    for r in results:
        print(f"size {r['size']}: warm call used {r['warm_cpu_s']:.2f} s of process CPU time "
              f"for {r['warm_s']:.2f} s wall; 1-min load average {r['load_start']:.1f} at start, "
              f"{r['load_end']:.1f} after the sweep (> {info['cores']} means other processes "
              "shared the cores and the wall times are inflated)")
    print("kernel s: build_problem (analytic train + test kernels); first-call includes JIT "
          "compile; warm = second call; peak RSS = VmHWM of a fresh process per size; GB/s "
          "achieved = steps * N^2 * 8 B / warm s; sweep ratio = warm 10-rate sweep / warm "
          "single prediction; dense ratio = explicit (QN)x(QN) numpy DGD / warm solver; eigh s "
          "= the reference's eigendecomposition (once per problem, cached; in first-call, not "
          "in warm); carried reference s = the previous method (reference columns in every "
          "kernel product), same run; numpy loop s = plain numpy DGD loop over agents "
          f"({NUMPY_STEPS} steps, extrapolated), ratio = numpy / warm solver.")
    for r in results:
        print(f"size {r['size']}: central metrics, eigenbasis vs carried reference: "
              f"{r['reference_difference']:.1e} relative; numpy loop train losses agree to "
              f"{r['numpy_agreement']:.1e}")
    for r in results:
        print(f"size {r['size']}: 10-rate sweep {r['sweep_s']:.2f} s = {r['sweep_ratio']:.2f}x one "
              f"prediction (CPU time {r['sweep_cpu_ratio']:.2f}x); with float32 kernel products "
              f"(float64 state) {r['sweep_f32_s']:.2f} s = {r['sweep_f32_ratio']:.2f}x (CPU time "
              f"{r['sweep_f32_cpu_ratio']:.2f}x), largest relative change of a metric "
              f"{r['sweep_f32_change']:.1e}, accuracy entries changed "
              f"{r['sweep_f32_acc_changes']}")
    for r in results:
        if "dense_agreement" in r:
            verdict = "OK" if r["dense_agrees"] else "FAILED"
            print(f"size {r['size']}: dense reference train losses agree with the solver to "
                  f"{r['dense_agreement']:.2e} relative (tolerance {AGREEMENT_TOL:g}): {verdict}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "bandwidth": bw, "results": results}, fh, indent=2)
    return 0 if all(r.get("dense_agrees", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
