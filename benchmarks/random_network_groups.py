"""Cost of one random network where each sampled network has columns of its own
(cross-entropy, random gossip, mini-batch SGD) against the plain ``f0="mean"`` prediction.

    python benchmarks/random_network_groups.py [--steps 500] [--repeats 1]

On the data of ``examples/default.toml`` (800 digits, 400 test, 8 agents, ring, depth 2):
for each case times ``nd.predict`` with ``f0="mean"`` and with ``f0="random"`` (default
``samples``: 16 networks), after one untimed run of each (JIT compilation), interleaved;
prints wall and process CPU medians and their ratios.  A timing script, never a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's ntkdyn, not an installed one


def main() -> None:
    import ntkdyn as nd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cases", default="cross_entropy,random_gossip,sgd")
    args = ap.parse_args()
    data = nd.data.digits(n_train=800, n_test=400, seed=0)
    parts = nd.data.partition(data, agents=8, scheme="iid", seed=0)
    ring = nd.graphs.topology("ring", 8)
    arch = nd.models.MLP(hidden=(1024, 1024), out=10)
    steps = range(0, args.steps + 1, max(1, args.steps // 50))
    cases = {
        "cross_entropy": dict(mixing=nd.graphs.mixing(ring), loss="cross_entropy"),
        "random_gossip": dict(mixing=nd.graphs.random_edges(ring, p=0.5, seed=0),
                              samples=16),
        "sgd": dict(mixing=nd.graphs.mixing(ring), batch_size=25, samples=16),
    }
    print(f"load average {os.getloadavg()[0]:.1f}; {args.steps} steps")
    for name in args.cases.split(","):
        kw = dict(cases[name])
        mixing = kw.pop("mixing")
        times = {"mean": [], "random": []}
        for rep in range(args.repeats + 1):
            for f0 in ("mean", "random"):
                t0, c0 = time.perf_counter(), time.process_time()
                traj = nd.predict(arch, parts, mixing, 0.3, "dgd", steps, f0=f0, **kw)
                if rep:
                    times[f0].append((time.perf_counter() - t0, time.process_time() - c0))
                if rep == args.repeats and f0 == "random":
                    lo, hi = traj.band("test_loss", 0.05, 0.95)
                    print(f"  {name}: expected final test loss "
                          f"{traj.test_loss[-1].mean():.4g} (5-95 %: {lo[-1].mean():.4g}-"
                          f"{hi[-1].mean():.4g}), mean network "
                          f"{traj.mean_network.test_loss[-1].mean():.4g}, "
                          f"{traj.samples} networks, band over {traj.metadata['band_over']}")
        wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
        cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
        print(f"  {name}: mean {wall['mean']:.2f} s wall / {cpu['mean']:.2f} s CPU; random "
              f"{wall['random']:.2f} s / {cpu['random']:.2f} s; ratio "
              f"{wall['random'] / wall['mean']:.1f} wall, {cpu['random'] / cpu['mean']:.1f} CPU")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
