"""Benchmark of the training harness (ntkdyn.training.trainer) against the prediction.

Usage::

    python benchmarks/train.py [--agents 8] [--width 1024] [--depth 2] [--steps 100]
                               [--record-every 10] [--dtype float32] [--json out.json]

Setup: the bundled digits (10 classes, 800 train / 400 test, iid), ``Q`` agents
on a ring with Metropolis weights, DGD at lr 0.4 (``examples/default.toml``),
``MLP(hidden=(width,) * depth)``.  Measured, each in this process:

* **train steps/s** (nonlinear and linearised network): :func:`ntkdyn.training.trainer.train`
  over ``steps`` iterations with a record every ``record_every`` (the records are
  part of the cost: every agent, the centralised reference and the averaged model
  on all train and test samples); the first chunk of records, which includes JIT
  compilation, is excluded; the linearised network runs ``steps // 4`` steps;
* **prediction wall time** for the same trajectory (same steps and records):
  :func:`ntkdyn.dynamics.run` end to end, kernels included, with the analytic NTK and
  with the (traced) empirical NTK of the network at its initialisation; first
  call (compilation included), then a second, warm one;
* **factor**: training wall time for the trajectory (compilation excluded:
  ``steps / steps_per_s``) over the prediction's (warm, end to end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import jax

    import ntkdyn as nd
    from ntkdyn.training.trainer import train
    from ntkdyn.validation.agreement import compare

    data = nd.data.digits(n_train=800, n_test=400, seed=0)
    parts = nd.data.partition(data, agents=args.agents, scheme="iid", seed=0)
    mixing = nd.graphs.mixing(nd.graphs.topology("ring", args.agents))
    arch = nd.models.MLP(hidden=(args.width,) * args.depth, out=10)
    lr, algo = 0.4, "dgd"
    steps = np.arange(0, args.steps + 1, args.record_every)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64),
                          nd.init_params(arch, data.dim, 0))
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "jax_backend": jax.default_backend(),
                    "load_avg": os.getloadavg()},
        "setup": {**vars(args), "num_params": arch.num_params(data.dim), "n_train": 800,
                  "n_test": 400, "algorithm": algo, "lr": lr},
    }

    def run_train(model, n_steps):
        st = np.arange(0, n_steps + 1, args.record_every)
        tic = time.perf_counter()
        traj = train(arch, parts, mixing, lr, algo, st, params0=params, model=model,
                     dtype=args.dtype, chunk=2)
        wall = time.perf_counter() - tic
        sps = traj.metadata["training"]["steps_per_second"]
        print(f"train {model:<10} {sps:8.3f} steps/s  ({n_steps} steps, {wall:.1f} s with "
              "compilation)", flush=True)
        return {"steps_per_s": sps, "wall_s_with_compile": wall, "steps": n_steps,
                "status": traj.status}, traj

    results["train_nonlinear"], observed = run_train("nonlinear", args.steps)
    results["train_linearised"], _ = run_train("linearised", max(args.steps // 4,
                                                                 4 * args.record_every))
    train_s = args.steps / results["train_nonlinear"]["steps_per_s"]
    for kernel in ("analytic", "empirical"):
        times = []
        for _ in range(2):
            tic = time.perf_counter()
            pred = nd.predict(arch, parts, mixing, lr, algo, steps, kernel=kernel,
                              params=params, f0="network")
            times.append(time.perf_counter() - tic)
        err = compare(pred, observed)["metrics"]["test_loss"]["mean"]
        results[f"predict_{kernel}"] = {"first_s": times[0], "warm_s": times[1],
                                        "factor_train_over_predict": train_s / times[1],
                                        "test_loss_rel_error": err}
        print(f"predict {kernel:<9} first {times[0]:6.2f} s, warm {times[1]:6.2f} s; "
              f"training the same trajectory takes {train_s:.1f} s = "
              f"{train_s / times[1]:.0f}x the warm prediction (test-loss error {err:.2%})",
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
