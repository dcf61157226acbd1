"""Primal path vs kernel path (issue 17 item 3) on a network with fewer parameters than
samples: digits, one-hidden-layer MLP, empirical kernel in the full layout.

Usage::

    python benchmarks/primal.py [--n-train 600 --width 6 --agents 4 --steps 200]

Prints P, N K, the time of each path (kernel computation / Jacobian included; a second
warm call of each as well), and the largest difference over every recorded quantity.

``--forms``: the stored-Jacobian form against the matrix-free form
(:mod:`ntkdyn.lowrank.matfree`) on synthetic data (Gaussian inputs, one-hot labels,
one-hidden-layer MLP), each run in a fresh process: time per step
(``(t(2 S) - t(S)) / S`` after a first, compiling call: the Jacobian and the records
cancel) and peak
resident memory (``VmHWM``); the matrix-free form without and with its linearisation
cache (``cache=False`` / ``True``; ``--one N:d:width:matrix_free:cache`` runs one).
``--sizes N:d:width,...`` (default: one size where both fit and one where only the
matrix-free form fits)::

    python benchmarks/primal.py --forms [--sizes 2000:64:32,20000:784:256 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--width", type=int, default=6)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--algorithm", default="dgd")
    p.add_argument("--forms", action="store_true")
    p.add_argument("--sizes", default="2000:64:32,20000:784:256")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # N:d:width:form, internal
    args = p.parse_args(argv)
    if args.one:
        return _one_form(args.one, args.agents, args.steps)
    if args.forms:
        return _compare_forms(args.sizes, args.agents, args.steps)

    import ntkdyn as nd

    data = nd.data.digits(n_train=args.n_train, n_test=args.n_test, seed=0)
    parts = nd.data.partition(data, agents=args.agents, seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", args.agents))
    arch = nd.models.MLP(hidden=(args.width,), out=data.num_classes)
    call = dict(lr=0.5, algorithm=args.algorithm, steps=range(0, args.steps + 1, 20),
                kernel="empirical", record_outputs=True)
    out = {"N": data.num_train, "K": data.num_classes}
    trajs = {}
    for name, kw in (("kernel", dict(traced=False)), ("primal", dict(path="primal"))):
        for rep in ("cold", "warm"):
            t0 = time.perf_counter()
            trajs[name] = nd.predict(arch, parts, w, **kw, **call)
            out[f"{name}_{rep}_s"] = round(time.perf_counter() - t0, 2)
    out["P"] = trajs["primal"].metadata["primal"]["num_params"]
    diffs = {}
    for f in ("train_loss", "test_loss", "param_dist", "consensus_dist", "train_outputs",
              "test_outputs"):
        a, b = getattr(trajs["kernel"], f), getattr(trajs["primal"], f)
        diffs[f] = float(np.max(np.abs(a - b)) / max(np.abs(a).max(), 1e-300))
    out["max_rel_diff"] = max(diffs.values())
    print(json.dumps(out, indent=1))
    return 0


def _one_form(spec: str, agents: int, steps: int) -> int:
    """One (size, form) in this process: time per step and peak memory, as JSON."""
    import ntkdyn as nd
    from ntkdyn.lowrank import predict_primal

    n, d, width, form, *rest = spec.split(":")
    n, d, width = int(n), int(d), int(width)
    cache = {"": None, "cache": True, "nocache": False}[rest[0] if rest else ""]
    kw = {"cache": cache} if form == "matrix_free" else {}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) / np.sqrt(d)
    y = np.eye(10)[rng.integers(0, 10, n)]
    agent = np.arange(n) % agents
    w = nd.graphs.mixing(nd.graphs.topology("ring", agents))
    arch = nd.models.MLP(hidden=(width,), out=10)
    params = nd.models.init_params(arch, d, 0)
    times = []
    for s in (steps, steps, 2 * steps):  # the first call compiles
        t0 = time.perf_counter()
        traj = predict_primal(arch.apply, params, x, y, agent, w, 0.1, [0, s], form=form,
                              **kw)
        times.append(time.perf_counter() - t0)
        print(f"call of {s} steps: {times[-1]:.1f} s", file=sys.stderr, flush=True)
    meta = traj.metadata["primal"]
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    print(json.dumps({"N": n, "d": d, "width": width, "P": meta["num_params"], "form": form,
                      "cached": meta.get("cached"), "cache_MB": round(meta.get(
                          "cache_bytes", 0) / 2**20),
                      "s_per_step": round((times[2] - times[1]) / steps, 4),
                      "first_call_s": round(times[0], 1), "peak_rss_MB": round(hwm / 2**20),
                      "estimate_MB": round(meta.get("memory_bytes", 0) / 2**20),
                      "stored_J_MB": round(8 * n * 10 * meta["num_params"] / 2**20),
                      "final_train_loss": float(traj.train_loss[-1].mean())}))
    return 0


def _compare_forms(sizes: str, agents: int, steps: int) -> int:
    """Every size with both forms (the stored one only where ``J`` fits), one process each."""
    import subprocess

    from ntkdyn._utils.memory import available_memory_bytes

    for size in sizes.split(","):
        n, d, width = (int(v) for v in size.split(":"))
        n_params = (d + 1) * width + (width + 1) * 10
        for form in ("features", "matrix_free:nocache", "matrix_free:cache"):
            if form == "features" and 3 * 8 * n * 10 * n_params > available_memory_bytes():
                print(json.dumps({"size": size, "form": form, "skipped": "J does not fit"}))
                continue
            out = subprocess.run([sys.executable, __file__, "--one", f"{size}:{form}",
                                  "--agents", str(agents), "--steps", str(steps)],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
