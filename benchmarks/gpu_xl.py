"""XL-data on one accelerator: the exact path in float32 against the low-rank path (issue 17).

    python benchmarks/gpu_xl.py [--n-train 60000 --n-test 10000 --agents 100] [--out DIR]
                                [--stages machine,exact,lowrank_mean,lowrank_random]

The configuration of ``benchmarks/lowrank.py`` (XL-data): synthetic data with MNIST's
shape (784 dims, K = 10; ``lowrank.make_data``), Q = 100 agents (``permutation(N) % Q``,
seed 1), Erdos-Renyi p = 0.05 with Metropolis weights, the analytic NTK of a depth-2 ReLU
MLP, DGD at lr 0.25, 1,000 steps, 51 records.  Stages, each timed and written to
``DIR/gpu_xl.json`` as soon as it finishes (``exact`` also after its kernels and its first
call, marked ``"unfinished"``; a stage that fails is recorded with its error,
and the next one still runs):

* ``machine``: the device, JAX's version, the copy bandwidth (``y = 2 x`` over 4 GiB of
  float32, bytes read + written) and the float32 matrix rate (8192^3, full precision);
* ``exact``: the exact path with float32 kernel storage (the state float64), mean network
  (``f0 = 0``), no centralised reference: the kernel built on the device in row blocks into
  host float32 arrays (``kernel_s``), then ``nd.predict_from_kernels`` once on three
  records (``first_s``: transfer and compilation) and once on all (``predict_s``); achieved
  bandwidth ``steps * kernel_bytes / predict_s``;
* ``lowrank_mean``: ``nd.predict(..., rank="auto", tol=1e-3, max_rank=512, f0="mean")``,
  the same problem; its pointwise error against ``exact`` (``max_t |low - exact| / |exact|``
  of the network-mean train and test loss and of ``param_dist``);
* ``lowrank_random``: the same with the default ``f0`` (one random network, 32 draws).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("machine", "exact", "lowrank_mean", "lowrank_random")


def machine() -> dict:
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    x = jnp.ones((2**30,), jnp.float32)
    f = jax.jit(lambda a: 2.0 * a)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        y = f(x)
    y.block_until_ready()
    gbs = 5 * 2 * x.nbytes / (time.perf_counter() - t) / 1e9
    del x, y
    n = 8192 if dev.platform != "cpu" else 1024
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(lambda u: jnp.matmul(u, u, precision="highest"))
    mm(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        b = mm(a)
    b.block_until_ready()
    tflops = 5 * 2 * n**3 / (time.perf_counter() - t) / 1e12
    return {"device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
            "jax": jax.__version__, "copy_gbs": round(gbs, 1),
            "fp32_matmul_tflops": round(tflops, 1), "host_cpus": os.cpu_count()}


def blocked_kernel(x_rows: np.ndarray, x_cols: np.ndarray, block: int) -> np.ndarray:
    """Analytic depth-2 ReLU NTK ``(rows, cols)`` in float32, ``block`` rows at a time."""
    from ntkdyn.kernels import analytic_ntk

    out = np.empty((len(x_rows), len(x_cols)), np.float32)
    for r0 in range(0, len(x_rows), block):
        r1 = min(r0 + block, len(x_rows))
        t0 = time.perf_counter()
        out[r0:r1] = analytic_ntk(x_rows[r0:r1], x_cols, hidden_layers=2)
        print(f"  kernel rows {r0}-{r1} of {len(x_rows)}: {time.perf_counter() - t0:.1f} s",
              flush=True)
    return out


def exact(args, prob, partial) -> tuple[dict, object]:
    """The exact stage; ``partial(dict)`` saves what is done so far (kernel, first call)."""
    import ntkdyn as nd

    x, y, xt, yt, agent, w, steps = prob
    t = time.perf_counter()
    k = blocked_kernel(x, x, args.block)
    kt = blocked_kernel(xt, x, args.block)
    kernel_s = time.perf_counter() - t
    partial({"kernel_s": round(kernel_s, 1)})
    call = dict(kernel_test_train=kt, y_test=yt, reference=False, kernel_dtype="float32")
    print(f"  kernels built in {kernel_s:.1f} s", flush=True)
    t = time.perf_counter()
    nd.predict_from_kernels(k, y, agent, w, args.lr, steps[:3], "dgd", **call)
    first_s = time.perf_counter() - t
    partial({"kernel_s": round(kernel_s, 1), "first_s": round(first_s, 1),
             "first_steps": int(steps[2])})
    print(f"  first call ({steps[2]} steps, compilation included) {first_s:.1f} s", flush=True)
    t = time.perf_counter()
    traj = nd.predict_from_kernels(k, y, agent, w, args.lr, steps, "dgd", **call)
    predict_s = time.perf_counter() - t
    nbytes = k.nbytes
    out = {"n_train": len(x), "n_test": len(xt), "kernel_s": round(kernel_s, 1),
           "first_s": round(first_s, 1), "predict_s": round(predict_s, 1),
           "steps": int(steps[-1]), "records": len(steps),
           "ms_per_step_incl_records": round(1e3 * predict_s / steps[-1], 3),
           "kernel_gb": round(nbytes / 1e9, 2),
           "achieved_gbs": round(steps[-1] * nbytes / predict_s / 1e9, 1),
           "status": traj.status,
           "final_test_loss": float(traj.network_mean("test_loss")[-1]),
           "final_test_acc": float(traj.network_mean("test_acc")[-1])}
    return out, traj


def lowrank(args, prob, f0: str, ref) -> dict:
    import ntkdyn as nd

    x, y, xt, yt, agent, w, steps = prob
    data = nd.data.from_arrays(x, y.argmax(1), xt, yt.argmax(1), standardise=False)
    parts = nd.data.partition(data, args.agents, "given", agent=agent)
    arch = nd.models.MLP(hidden=(1024, 1024), out=y.shape[1])
    t = time.perf_counter()
    traj = nd.predict(arch, parts, w, lr=args.lr, steps=steps, kernel="analytic",
                      rank="auto", tol=1e-3, max_rank=args.max_rank, f0=f0)
    total = time.perf_counter() - t
    low = traj.metadata["low_rank"]
    out = {"f0": f0, "rank": low["rank"], "form": low.get("form"),
           "factor_s": round(float(low.get("seconds_total", 0.0)), 1),
           "total_s": round(total, 1), "error_estimate": low["error_estimate"],
           "error_estimate_test": low.get("error_estimate_test"), "status": traj.status,
           "final_test_loss": float(traj.network_mean("test_loss")[-1]),
           "final_test_acc": float(traj.network_mean("test_acc")[-1])}
    if ref is not None and f0 == "mean":
        for m in ("train_loss", "test_loss", "param_dist"):
            a, b = traj.network_mean(m), ref.network_mean(m)
            keep = np.abs(b) > 0
            out[f"pointwise_rel_err_{m}"] = float(np.max(np.abs(a - b)[keep] / np.abs(b[keep])))
            out[f"horizon_rel_err_{m}"] = float(abs(a[-1] - b[-1]) / abs(b[-1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=60_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--records", type=int, default=50)
    ap.add_argument("--max-rank", type=int, default=512)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    from lowrank import make_data

    import ntkdyn as nd

    out_path = Path(args.out) / "gpu_xl.json"
    res: dict = {"args": vars(args)}
    t = time.perf_counter()
    x, y, xt, yt = make_data(args.n_train, args.n_test, 784, 10, 16)
    agent = np.random.default_rng(1).permutation(args.n_train) % args.agents
    w = nd.graphs.mixing(nd.graphs.topology("erdos_renyi", args.agents, p=0.05, seed=0),
                         rule="metropolis")
    steps = np.linspace(0, args.steps, args.records + 1).round().astype(int)
    prob = (x, y, xt, yt, agent, w, steps)
    res["data_s"] = round(time.perf_counter() - t, 1)
    ref = None
    for stage in args.stages.split(","):
        t = time.perf_counter()
        try:
            if stage == "machine":
                res[stage] = machine()
            elif stage == "exact":
                def partial(done: dict) -> None:
                    res["exact"] = {**done, "unfinished": True}
                    out_path.write_text(json.dumps(res, indent=1, default=float))

                res[stage], ref = exact(args, prob, partial)
            else:
                res[stage] = lowrank(args, prob, stage.split("_")[1], ref)
        except Exception as exc:  # noqa: BLE001 - record and go on to the next stage
            res[stage] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            traceback.print_exc()
        res[stage]["stage_s"] = round(time.perf_counter() - t, 1)
        res[stage]["peak_rss_gb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        print(stage, json.dumps(res[stage]), flush=True)
        out_path.write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
