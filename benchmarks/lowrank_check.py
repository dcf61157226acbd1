"""``ntkdyn check`` with a rank at data-set scale, as a user runs it (a fresh process).

The default is the XL-data configuration of issue 17: synthetic data with MNIST's shape
(N 60,000 training / 10,000 test samples, 784 inputs, 10 classes), 100 agents (iid) on an
Erdos-Renyi graph (p 0.05, Metropolis weights), depth-2 width-1024 analytic NTK, DGD at
lr 0.25, 1,000 steps recorded every 20, ``rank = 512``, the mean network (``f0 = "mean"``).
Prints, as JSON: the wall time, the report's own breakdown (factor / stability /
prediction, sweep and steady state, of which ``sweep_s`` the 10-rate sweep), the peak
resident set of the child process, the load average, and each verdict's spectral radius,
``lr*`` and method.

    python benchmarks/lowrank_check.py [--n-train 60000 --n-test 10000 --rank 512]

``--sequence erdos_renyi,ring`` replaces the static graph by a periodic sequence of named
topologies (the feature operator then has no structured radius: every rate of the
stable-set search is a Krylov solve), e.g. the stop-40 figure of the README:

    python benchmarks/lowrank_check.py --source digits --n-train 1400 --n-test 390 \
        --p 0.08 --rank 200 --lr 0.05 --steps 200 --sequence erdos_renyi,ring

A timing script, never a test: the figures go into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ntkdyn"]

CONFIG = """seed = 0
[data]
source = "{source}"
classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
n_train = {n_train}
n_test = {n_test}
{dim}
[partition]
scheme = "iid"
agents = {agents}
[topology]
{topology}
{params}
[architecture]
depth = 2
width = 1024
[training]
algorithm = "dgd"
lr = {lr}
steps = {steps}
record_every = 20
[prediction]
kernel = "analytic"
rank = {rank}
f0 = "mean"
target_loss = 0.3
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--p", type=float, default=0.05,
                   help="Erdos-Renyi edge probability (unused without erdos_renyi)")
    p.add_argument("--rank", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--source", choices=("synthetic", "digits"), default="synthetic",
                   help="synthetic data with MNIST's shape, or the bundled digits (at most "
                        "1,797 samples in all)")
    p.add_argument("--sequence", default="",
                   help="comma-separated topologies of a periodic sequence (default: a "
                        "static Erdos-Renyi graph)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.sequence.split(",") if n.strip()]
    topology = (f"sequence = {json.dumps(names)}" if names else 'name = "erdos_renyi"')
    # --p only where a topology takes it: the check refuses a parameter no topology uses
    params = (f"params = {{ p = {args.p} }}" if not names or "erdos_renyi" in names else "")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "xl.toml"
        dim = "dim = 784" if args.source == "synthetic" else ""
        cfg.write_text(CONFIG.format(**vars(args), topology=topology, params=params, dim=dim))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = subprocess.run(CLI + ["check", str(cfg), "--json"], capture_output=True,
                              text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: outside the regime or target not reached
        sys.exit(f"ntkdyn check failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    out = {**vars(args), "wall_s": round(wall, 1),
           "timings_s": {k: round(v, 1) for k, v in report["timings"].items()},
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                / 2**20, 2),
           "load_average": os.getloadavg(),
           "verdicts": [{key: v[key] for key in ("algorithm", "spectral_radius", "lr_star",
                                                  "method")} for v in report["stability"]]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
