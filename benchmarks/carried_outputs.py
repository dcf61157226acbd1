"""The exact path with many agents and records: the plain state against the state that
carries the agents' training outputs (:func:`ntkdyn.dynamics.solver.carries_outputs`,
``[alpha; Theta alpha]``), in the same process, each timed on its second call (compiled).

    PYTHONPATH=. python benchmarks/carried_outputs.py [--n 4096 --test 1024 --agents 128
        --steps 200 --records 50 --dtype float32 --algorithm dgd]

Synthetic MNIST-shaped data (784 dimensions, 10 classes, 16 latent dimensions plus noise,
as ``benchmarks/lowrank.py``), ``--agents`` equal iid shards (sample ``i`` to agent
``i mod Q``; ``--n`` must be a multiple), Erdos-Renyi mixing (``p = min(1, 5/Q)``, seed 0,
Metropolis), the analytic NTK of a depth-2 ReLU MLP, rate 0.25, ``--records`` records
evenly over ``--steps`` steps, no centralised reference (``--reference`` adds it).

Why it matters: a record multiplies the kernel by every slot (``2 R^2 A C`` flops, ``A``
times a step's product); with ``Q = 100`` agents and a record every 20 steps the records
are 5x the steps' flops.  Carrying the outputs makes a record cost no product, for one more
combine and a few more passes over a twice larger state per step.

Prints JSON: wall and process CPU seconds of each, the ratio plain / carried, what
``carries_outputs`` would choose here, the largest relative difference of the network-mean
training and test losses and ``param_dist`` between the two, and the load average.
A timing script, never a test: the figures go into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import ntkdyn as nd
from ntkdyn.algorithms import get_algorithm
from ntkdyn.dynamics import solver
from ntkdyn.kernels import analytic_ntk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lowrank import make_data  # noqa: E402  (the XL-data generator, same seed)


def _timed(fn):
    fn()  # compile
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--agents", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--records", type=int, default=50)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--algorithm", default="dgd")
    p.add_argument("--reference", action="store_true")
    args = p.parse_args(argv)
    if args.n % args.agents:
        p.error(f"--n: expected a multiple of --agents ({args.agents}), got {args.n}")
    x, y, xt, yt = make_data(args.n, args.test, 784, 10, 16)
    q = args.agents
    agent = np.arange(args.n) % q
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", q, p=min(1.0, 5 / q), seed=0),
                         rule="metropolis")
    problem = nd.make_problem(np.asarray(analytic_ntk(x, hidden_layers=2)), y, agent, w,
                              kernel_test_train=np.asarray(analytic_ntk(xt, x, hidden_layers=2)),
                              y_test=yt)
    algo = get_algorithm(args.algorithm)
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    lrs = np.full((1, q), 0.25)
    res = {"n": args.n, "test": args.test, "agents": q, "steps": args.steps,
           "records": len(steps), "dtype": args.dtype, "algorithm": algo.name,
           "reference": args.reference,
           "auto_carries": solver.carries_outputs(problem, len(steps) * algo.records_per_step,
                                                  args.steps, central=args.reference,
                                                  mixes_per_step=algo.mixes_per_step)}
    runs = {}
    for name, carried in (("plain", False), ("carried", True)):
        out, wall, cpu = _timed(lambda c=carried: solver.evolve(
            problem, algo, lrs, steps, central=args.reference, kernel_dtype=args.dtype,
            carry_outputs=c))
        runs[name] = out
        res[f"{name}_wall_s"], res[f"{name}_cpu_s"] = round(wall, 2), round(cpu, 2)
    res["ratio_wall"] = round(res["plain_wall_s"] / res["carried_wall_s"], 2)
    res["ratio_cpu"] = round(res["plain_cpu_s"] / res["carried_cpu_s"], 2)
    res["max_rel_diff"] = max(_max_rel(runs["carried"][k].mean(axis=1),
                                       runs["plain"][k].mean(axis=1))
                              for k in ("train_loss", "test_loss", "param_dist"))
    res["load_average"] = [round(v, 1) for v in os.getloadavg()]
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
