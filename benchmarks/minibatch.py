"""Cost of mini-batch SGD predictions: ``samples`` sampled batch sequences vs one.

Usage::

    python benchmarks/minibatch.py [--n 1024] [--q 8] [--k 10] [--steps 200] [--batch 32]
                                   [--samples 1,8,64] [--json out.json]

Synthetic Gaussian-mixture data (dim 64, ``K`` classes), an iid partition over ``Q``
agents, a ring, the analytic NTK of ``MLP(hidden=(1024, 1024), out=K)`` (traced kernel),
ATC at lr 0.5 with the squared loss, ``steps`` steps with 10 records, ``N/4`` test
samples.  For each ``samples``: the warm wall time of ``ntkdyn.dynamics.run.run_problem`` with
``batch_size`` (best of 2 calls after a compiling one), next to the full-batch prediction.
Every mini-batch run also carries the full-batch expected group (one more column group),
so ``samples = 1`` runs two groups and ``samples = 64`` sixty-five.  Process CPU time is
printed beside every wall time (on a shared machine the CPU-time ratio is the steadier one),
with the 1-minute load average.

``--gather-probe`` also times, at the same shapes, the one product of the gradient that
mini-batches make sparse, three ways: masked (what the solver does: every agent's full
row block times every column group, the batch applied as a 0/1 row weight afterwards),
gathered in one piece (each sequence's ``B`` batch rows of each agent gathered with
``jnp.take``, then a batched product: ``N_q / B`` times fewer flops) and gathered per
sequence inside ``lax.map`` (the gathered rows of one sequence stay in cache).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--q", type=int, default=8)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--gather-probe", action="store_true")
    args = ap.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn.dynamics.run import run_problem

    data = nd.data.synthetic(n_train=args.n, n_test=args.n // 4, dim=64, classes=args.k,
                             seed=0)
    parts = nd.data.partition(data, agents=args.q, scheme="iid", seed=0)
    w = nd.graphs.mixing(nd.graphs.topology("ring", args.q))
    arch = nd.models.MLP(hidden=(1024, 1024), out=args.k)
    problem = nd.build_problem(arch, parts, w)
    steps = np.linspace(0, args.steps, 11).astype(int)

    def timed(**kw) -> tuple[float, float]:
        run_problem(problem, "atc", [0.5], steps, check_stability=False, **kw)  # compile
        best, best_cpu = np.inf, np.inf
        for _ in range(args.repeats):
            tic, cpu = time.perf_counter(), time.process_time()
            run_problem(problem, "atc", [0.5], steps, check_stability=False, **kw)
            best = min(best, time.perf_counter() - tic)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        return float(best), float(best_cpu)

    out = {"n": args.n, "q": args.q, "k": args.k, "steps": args.steps, "batch": args.batch}
    out["full_batch_s"], out["full_batch_cpu_s"] = timed()
    print(f"N={args.n} Q={args.q} K={args.k} steps={args.steps} batch={args.batch}")
    print(f"full batch: {out['full_batch_s']:.3f} s (CPU {out['full_batch_cpu_s']:.3f} s)")
    for s in (int(v) for v in args.samples.split(",")):
        out[f"samples_{s}_s"], out[f"samples_{s}_cpu_s"] = timed(batch_size=args.batch,
                                                                 samples=s)
        print(f"samples={s}: {out[f'samples_{s}_s']:.3f} s (CPU {out[f'samples_{s}_cpu_s']:.3f}"
              f" s; load average {os.getloadavg()[0]:.1f})")
    sizes = [int(v) for v in args.samples.split(",")]
    if 1 in sizes:
        for s in sizes:
            out[f"ratio_{s}_over_1"] = out[f"samples_{s}_s"] / out["samples_1_s"]
            out[f"cpu_ratio_{s}_over_1"] = out[f"samples_{s}_cpu_s"] / out["samples_1_cpu_s"]
            print(f"ratio samples={s} / samples=1: {out[f'ratio_{s}_over_1']:.2f} (CPU time "
                  f"{out[f'cpu_ratio_{s}_over_1']:.2f})")
    if args.gather_probe:
        out["gather_probe"] = gather_probe(problem, max(sizes), args.batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


def gather_probe(problem, samples: int, batch: int, repeats: int = 5) -> dict:
    """Milliseconds (best of ``repeats``, wall and CPU) and GFLOP/s of the sparse product of
    one SGD gradient, masked vs gathered (see the module doc); squared loss, carried
    reference (agents' and centralised columns), ``samples`` sequences of ``K`` columns."""
    import jax
    import jax.numpy as jnp

    exact = jax.lax.Precision.HIGHEST
    counts = np.asarray(problem.counts)
    q, n, k = len(counts), int(counts[0]), problem.num_outputs
    rows = int(counts.sum())
    if np.any(counts != n):
        return {"skipped": "unequal shards"}
    g = samples + 1
    blocks = jnp.asarray(problem.kernel.reshape(q, n, rows))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((q + 1, rows, g * k)))
    idx = jnp.asarray(np.stack([[np.random.default_rng(s * q + a).permutation(n)[:batch]
                                 for a in range(q)] for s in range(samples)]))  # (S, Q, B)

    def masked(blocks, x, idx):
        return (jnp.einsum("qnr,qrc->qnc", blocks, x[:q], precision=exact),
                jnp.einsum("qnr,rc->qnc", jax.lax.optimization_barrier(blocks), x[q],
                           precision=exact))

    def gathered(blocks, x, idx):
        kb = jax.vmap(lambda b, r: jnp.take(b, r.reshape(-1), axis=0))(
            blocks, idx.transpose(1, 0, 2)).reshape(q, samples, batch, rows)
        xa = x[:q].reshape(q, rows, g, k)[:, :, :samples]
        xc = x[q].reshape(rows, g, k)[:, :samples]
        return (jnp.einsum("qsbr,qrsc->qsbc", kb, xa, precision=exact),
                jnp.einsum("qsbr,rsc->qsbc", kb, xc, precision=exact))

    def gathered_map(blocks, x, idx):
        flat = blocks.reshape(rows, rows)
        glob = (idx + jnp.arange(q)[None, :, None] * n).reshape(samples, q * batch)
        xa, xc = x[:q].reshape(q, rows, g, k), x[q].reshape(rows, g, k)

        def one(s):
            kb = jnp.take(flat, glob[s], axis=0).reshape(q, batch, rows)
            xs = jax.lax.dynamic_index_in_dim(xa, s, 2, keepdims=False)
            cs = jax.lax.dynamic_index_in_dim(xc, s, 1, keepdims=False)
            return (jnp.einsum("qbr,qrc->qbc", kb, xs, precision=exact),
                    jnp.einsum("qbr,rc->qbc", kb, cs, precision=exact))

        return jax.lax.map(one, jnp.arange(samples))

    flops = {"masked": 2 * 2 * rows * rows * g * k,
             "gathered": 2 * 2 * q * samples * batch * rows * k}
    flops["gathered_map"] = flops["gathered"]
    out = {}
    for name, fn in (("masked", masked), ("gathered", gathered), ("gathered_map", gathered_map)):
        f = jax.jit(fn)
        jax.block_until_ready(f(blocks, x, idx))
        wall, cpu = np.inf, np.inf
        for _ in range(repeats):
            tic, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(f(blocks, x, idx))
            wall, cpu = min(wall, time.perf_counter() - tic), min(cpu, time.process_time() - c)
        out[name] = {"ms": 1e3 * wall, "cpu_ms": 1e3 * cpu, "gflops": flops[name] / wall / 1e9}
        print(f"gather probe, {name}: {1e3 * wall:.1f} ms (CPU {1e3 * cpu:.1f} ms), "
              f"{flops[name] / 1e9:.2f} GFLOP at {flops[name] / wall / 1e9:.1f} GFLOP/s; load "
              f"average {os.getloadavg()[0]:.1f}")
    return out


if __name__ == "__main__":
    main()
