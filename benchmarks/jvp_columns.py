"""The generic empirical-kernel column source (:class:`ntkdyn.lowrank.JacobianColumns`,
Jacobian-vector products, any ``apply_fn``) against the layerwise MLP formula
(:class:`ntkdyn.lowrank.EmpiricalColumns`) on the same MLP: time of one block of kernel
columns (after a first, compiling block) and the largest difference between the two.

Usage::

    python benchmarks/jvp_columns.py [--n 1024 --d 32 --width 128 --depth 2 --block 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--outputs", type=int, default=10)
    p.add_argument("--block", type=int, default=64)
    args = p.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn import lowrank

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.d)) / np.sqrt(args.d)
    arch = nd.models.MLP(hidden=(args.width,) * args.depth, out=args.outputs)
    params = nd.models.init_params(arch, args.d, 0)
    sources = {"mlp_layerwise": lowrank.empirical_columns(arch, params, x),
               "jvp_generic": lowrank.jacobian_columns(arch.apply, params, x)}
    blocks = [rng.choice(args.n, args.block, replace=False) for _ in range(2)]
    out = {"N": args.n, "d": args.d, "width": args.width, "depth": args.depth,
           "K": args.outputs, "block": args.block,
           "P": sum(int(np.size(a)) for a in __import__("jax").tree.leaves(params))}
    cols = {}
    for name, src in sources.items():
        src.columns(blocks[0])  # compiles
        t0 = time.perf_counter()
        cols[name] = src.columns(blocks[1])
        out[f"{name}_s_per_block"] = round(time.perf_counter() - t0, 3)
    out["ratio"] = round(out["jvp_generic_s_per_block"] / out["mlp_layerwise_s_per_block"], 1)
    a, b = cols["mlp_layerwise"], cols["jvp_generic"]
    out["max_rel_diff"] = float(np.max(np.abs(a - b)) / np.abs(a).max())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
