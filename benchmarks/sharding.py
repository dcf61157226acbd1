"""Strong scaling of sharded predictions over simulated CPU devices.

    python benchmarks/sharding.py [--n 2048] [--agents 16] [--steps 1000] [--devices 1,2,4]

Each device count runs in a fresh process with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (the count is fixed when
JAX starts).  What it shows: that the sharded code path gives the same answer
and what its partitioning and collectives cost.  What it cannot show: speed-up
-- the simulated devices share this machine's cores and memory bus, so the
ideal is a flat line, not 1/D.  Real scaling needs real devices (see the GPU
figures in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
import numpy as np, jax
sys.path.insert(0, {root!r})
import ntkdyn as nd
from ntkdyn.dynamics.run import run_problem
n, q, steps = {n}, {q}, {steps}
data = nd.data.synthetic(n_train=n, n_test=n // 4, dim=64, classes=10, seed=0)
parts = nd.data.partition(data, agents=q, seed=0)
w = nd.graphs.mixing(nd.graphs.topology("ring", q))
problem = nd.build_problem(nd.models.MLP(hidden=(512, 512), out=10), parts, w)
lr = 0.5 * nd.dynamics.stability.sufficient_bound(problem, "dgd")
rec = np.linspace(0, steps, 11).astype(int)
devs = jax.devices() if len(jax.devices()) > 1 else None
run_problem(problem, "dgd", [lr], rec[:2], devices=devs, check_stability=False)
t = time.perf_counter()
traj = run_problem(problem, "dgd", [lr], rec, devices=devs, check_stability=False)[0]
dt = time.perf_counter() - t
print(json.dumps(dict(devices=len(jax.devices()), seconds=dt,
                      ms_per_step=1e3 * dt / steps,
                      final_test_loss=float(traj.network_mean("test_loss")[-1]))))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--devices", default="1,2,4")
    args = ap.parse_args(argv)
    root = str(Path(__file__).resolve().parents[1])
    code = WORKER.format(root=root, n=args.n, q=args.agents, steps=args.steps)
    rows = []
    for d in (int(x) for x in args.devices.split(",")):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print("\n| devices | ms/step | vs 1 device | final test loss |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['ms_per_step']:.2f} | {r['seconds'] / base['seconds']:.2f}x "
              f"| {r['final_test_loss']:.10f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
