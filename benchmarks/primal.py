"""Primal path vs kernel path (issue 17 item 3) on a network with fewer parameters than
samples: digits, one-hidden-layer MLP, empirical kernel in the full layout.

Usage::

    python benchmarks/primal.py [--n-train 600 --width 6 --agents 4 --steps 200]

Prints P, N K, the time of each path (kernel computation / Jacobian included; a second
warm call of each as well), and the largest difference over every recorded quantity.
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
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
