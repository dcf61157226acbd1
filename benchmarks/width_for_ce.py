"""``nd.width_for(loss="cross_entropy")`` checked against real cross-entropy networks.

Usage::

    python benchmarks/width_for_ce.py [--tols 0.008,0.02] [--batches 0,5] [--networks 32]
        [--steps 100] [--lr 0.5] [--widths 128,512,2048] [--width-samples 64]
        [--init-samples 16] [--plain] [--linearised] [--json out/width_for_ce.json]

Problem: digits of 3 classes, 40 train / 20 test, 4 agents (iid shards of 10), ring
(Metropolis), a one-hidden-layer ``MLP`` (package default activation and ``W_std``), DGD at
``lr``, ``steps`` steps, softmax cross-entropy (logit scale 1), full batch (``batch 0``)
and mini-batch SGD (``batch B``, epoch sampling).  For each ``(tol, batch)``:

1. ``nd.width_for(metric="test_loss", tol, loss="cross_entropy", batch_size=B,
   widths, samples=width_samples, f0="mean", init_samples)`` returns a width ``n*`` (the
   5-95 % half-width of the test loss at the horizon, worst agent, in nats, of the
   linearised cross-entropy prediction over width-``n`` kernels at initialisation; with
   SGD of each kernel's mean over ``init_samples`` sampled batch sequences);
2. ``networks`` real networks of width ``n*`` are trained peer to peer with the same loss
   (:func:`ntkdyn.training.trainer.train`, float32; network ``s`` initialised with seed
   ``s``; with SGD every network on the batches of sequence 0 of the prediction with
   ``seed=0``, ``batch_sample=0``, as ``ntkdyn validate`` trains them);
3. their 5-95 % half-width of the final test loss is measured as ``width_for`` measures
   it (``1.645 sd`` over the networks per agent, worst agent), with a 90 % bootstrap
   interval over the networks, and divided by ``tol``.

Which real network.  ``f0="mean"`` sizes the spread of the *mean-network* prediction
(``f_0 = 0``) over kernels, so the like-for-like real network is the **centred** one,
``g(x; theta) = f(x; theta) - f(x; theta_0)`` (the same parameters and gradients, hence
the same empirical NTK at initialisation, but ``g_0 = 0``; its kernel moves during
training as the plain network's does): the spread of centred networks is the width band
plus the kernel's motion plus the nonlinearity.  A plain network also carries its own
random ``f_0``, whose spread does not shrink with the width (``--plain`` reports it for
context).

Beside them, per network (seeds ``0 .. networks - 1`` at ``n*``): the linearised prediction
``width_for`` is built on (``width_draws``: each network's *traced* empirical NTK, the mean
over the ``K`` output blocks times ``I_K``; with SGD on sequence 0, the batches the real
networks train on, and the mean over ``init_samples`` sequences), and the exact
linearisation of the centred network (its *full* ``(NK, NK)`` empirical NTK,
``nd.predict(kernel="empirical", traced=False, f0="mean")``), with the gaps
real - full (the kernel's motion and the nonlinearity) and full - traced (the
off-diagonal output blocks of a finite-width NTK, also ``O(n^{-1/2})``, which the width
band leaves out).  ``run_case(model="linearised", dtype="float64")`` trains the
linearised networks: they equal the full-kernel prediction to rounding (the pairing of
seeds and batch sequences, ``tests/test_benchmark_width_for_ce.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: central band sized (5-95 %)
LEVEL = 0.9


def problem(n_train: int = 40, n_test: int = 20, classes: int = 3, agents: int = 4):
    """``(parts, W, arch)``: digits of ``classes`` classes, iid shards, a ring."""
    import ntkdyn as nd

    data = nd.data.digits(classes=range(classes), n_train=n_train, n_test=n_test, seed=0)
    parts = nd.data.partition(data, agents=agents, scheme="iid", seed=0)
    W = nd.graphs.mixing(nd.graphs.topology("ring", agents))
    return parts, W, nd.models.MLP(hidden=(64,), out=classes)


def _centred():
    """``centred(arch, params0)`` of ``validate/width_for_check.py`` (one definition)."""
    spec = importlib.util.spec_from_file_location(
        "width_for_check", ROOT / "validate" / "width_for_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.centred


def half_width(values: np.ndarray) -> float:
    """Worst-agent 5-95 % half-width of ``(S, Q)`` final values (``width_for``'s measure)."""
    from ntkdyn import finite_width as fw

    return float(np.max(fw.half_width(np.asarray(values, float)[:, None, :], LEVEL)))


def bootstrap(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90 % percentile bootstrap interval of :func:`half_width`, resampling networks."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    z = 1.6448536269514722  # the standard normal's 95 % quantile
    stats = z * np.max(np.std(values[idx], axis=1, ddof=1), axis=-1)
    lo, hi = np.quantile(stats, [0.05, 0.95])
    return float(lo), float(hi)


def train_final(arch, parts, W, seeds, *, lr, steps, batch_size, centre=True,
                model="nonlinear", dtype="float32") -> np.ndarray:
    """Final per-agent test loss ``(S, Q)`` of networks ``seeds`` trained peer to peer
    with cross-entropy (centred with ``centre``; SGD on sequence 0 of seed 0)."""
    import jax

    from ntkdyn import finite_width as fw
    from ntkdyn.training.trainer import train

    centred = _centred()
    out = []
    for s in seeds:
        p0 = next(fw.network_params(arch, parts.dataset.dim, [s]))
        net = centred(arch, p0) if centre else arch
        traj = train(net, parts, W, lr, "dgd", [0, steps], params0=p0, seed=0, model=model,
                     dtype=dtype, loss="cross_entropy", batch_size=batch_size,
                     batch_sample=0)
        if traj.status != "ok":
            raise RuntimeError(f"network {s}: training status {traj.status}")
        out.append(np.asarray(traj.test_loss, float)[-1])
        jax.clear_caches()  # one compilation per network (its own apply): free them
    return np.stack(out)


def linearised_full(arch, parts, W, seeds, *, lr, steps, batch_size) -> np.ndarray:
    """Final per-agent test loss ``(S, Q)`` of the exact linearisation of the centred
    networks ``seeds``: the prediction with each network's **full** empirical NTK
    (``traced=False``, the ``(NK, NK)`` kernel with its off-diagonal output blocks),
    ``f0="mean"``; SGD on sequence 0 of seed 0 (the batches :func:`train_final` uses)."""
    import ntkdyn as nd
    from ntkdyn import finite_width as fw

    kw = dict(batch_size=batch_size, samples=1) if batch_size else {}
    out = []
    for s in seeds:
        p0 = next(fw.network_params(arch, parts.dataset.dim, [s]))
        traj = nd.predict(arch, parts, W, lr=lr, steps=[0, steps], kernel="empirical",
                          params=p0, f0="mean", traced=False, loss="cross_entropy", seed=0,
                          reference=False, **kw)
        out.append(np.asarray(traj.test_loss, float)[-1])
    return np.stack(out)


def _gap(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-network difference ``a - b`` of ``(S, Q)`` final values, summarised."""
    d = a - b
    return {"mean": float(d.mean()), "sd": float(d.std(ddof=1)),
            "max_abs": float(np.abs(d).max()),
            "corr": float(np.corrcoef(a.ravel(), b.ravel())[0, 1])}


def run_case(parts, W, arch, *, tol: float, batch_size: int = 0, networks: int = 32,
             lr: float = 0.5, steps: int = 100, widths=(128, 512, 2048), width_samples: int = 64,
             init_samples: int = 16, plain: bool = False, model: str = "nonlinear",
             dtype: str = "float32") -> dict:
    """One ``(tol, batch_size)`` row: ``width_for``'s width, then ``networks`` real
    networks trained at it (module doc).  ``model="linearised"``, ``dtype="float64"``
    trains the linearised networks instead (then the gap to the prediction is rounding:
    a check of the pairing of seeds and batch sequences)."""
    import ntkdyn as nd
    from ntkdyn import finite_width as fw

    ce = dict(loss="cross_entropy", batch_size=batch_size)
    sgd = dict(init_samples=init_samples) if batch_size else {}
    t0 = time.perf_counter()
    est = nd.width_for(arch, parts, W, lr=lr, steps=[0, steps], metric="test_loss", tol=tol,
                       widths=tuple(widths), samples=width_samples, f0="mean", **ce, **sgd)
    row = {"tol": tol, "batch_size": batch_size, "width": est.width,
           "constant": est.constant, "free_slope": est.slope, "law_holds": est.law_holds,
           "spreads": dict(zip(map(str, est.widths), est.spreads, strict=True)),
           "width_for_s": time.perf_counter() - t0, "networks": networks}
    seeds = list(range(networks))
    t0 = time.perf_counter()
    lin = {}  # the same networks' linearised prediction; SGD: sequence 0 and the mean
    for key, count in (("sequence0", 1), ("mean", init_samples)) if batch_size else (
            ("full_batch", None),):
        draws, _ = fw.width_draws(arch, parts, W, lr, "dgd", [0, steps], width=est.width,
                                  samples=networks, seed=0, f0="mean", init_samples=count,
                                  **ce)
        lin[key] = draws["test_loss"][:, -1]
    paired = lin["sequence0" if batch_size else "full_batch"]
    net = fw.width_arch(arch, est.width)
    full = linearised_full(net, parts, W, seeds, lr=lr, steps=steps, batch_size=batch_size)
    row["predict_same_seeds_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    real = train_final(net, parts, W, seeds, lr=lr, steps=steps, batch_size=batch_size,
                       model=model, dtype=dtype)
    row["train_s"] = time.perf_counter() - t0
    measured, (lo, hi) = half_width(real), bootstrap(real)
    row.update({
        "linearised_same_seeds": {k: half_width(v) for k, v in lin.items()},
        "linearised_full_kernel": half_width(full),
        "real_centred": measured, "real_centred_90ci": [lo, hi],
        "ratio": measured / tol, "ratio_90ci": [lo / tol, hi / tol],
        "real_quantile_half_width": float(np.max(np.diff(
            np.quantile(real, [0.05, 0.95], axis=0), axis=0)) / 2),
        "mean_real": float(real.mean()), "mean_linearised": float(paired.mean()),
        "mean_linearised_full": float(full.mean()),
        "gap_real_vs_traced": _gap(real, paired), "gap_real_vs_full": _gap(real, full),
        "gap_full_vs_traced": _gap(full, paired),
    })
    if plain:
        t0 = time.perf_counter()
        row["real_plain"] = half_width(train_final(net, parts, W, seeds, lr=lr, steps=steps,
                                                   batch_size=batch_size, centre=False))
        row["train_plain_s"] = time.perf_counter() - t0
    return row


def _line(r: dict) -> str:
    lo, hi = r["ratio_90ci"]
    lin = ", ".join(f"{k} {v:.4f}" for k, v in r["linearised_same_seeds"].items())
    g = r["gap_real_vs_full"]
    return (f"tol {r['tol']:g} nats, batch {r['batch_size'] or 'full'}: width {r['width']} "
            f"({r['constant']:.3g}/sqrt(n), free slope {r['free_slope']:.2f}); "
            f"{r['networks']} centred real networks: half-width {r['real_centred']:.4f} "
            f"= {r['ratio']:.2f} x tol [90 % bootstrap {lo:.2f}, {hi:.2f}]; linearised same "
            f"seeds: traced kernel {lin}, full kernel {r['linearised_full_kernel']:.4f}; "
            f"real - full-kernel linearised: sd {g['sd']:.4f}, corr {g['corr']:.2f}"
            + (f"; plain {r['real_plain']:.3f}" if "real_plain" in r else "")
            + f"; {r['width_for_s'] + r['predict_same_seeds_s'] + r['train_s']:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tols", default="0.008,0.02")
    ap.add_argument("--batches", default="0,5")
    ap.add_argument("--networks", type=int, default=32)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--widths", default="128,512,2048")
    ap.add_argument("--width-samples", type=int, default=64)
    ap.add_argument("--init-samples", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--plain", action="store_true", help="also train uncentred networks")
    ap.add_argument("--linearised", action="store_true",
                    help="train the linearised networks in float64 (a check of the pairing: "
                         "they equal the full-kernel prediction to rounding)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)

    parts, W, arch = problem(args.n_train, args.n_test)
    res = {"args": vars(args), "load_before": os.getloadavg()[0], "rows": []}
    t0 = time.perf_counter()
    for tol in (float(t) for t in args.tols.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            row = run_case(parts, W, arch, tol=tol, batch_size=batch,
                           networks=args.networks, lr=args.lr, steps=args.steps,
                           widths=[int(w) for w in args.widths.split(",")],
                           width_samples=args.width_samples,
                           init_samples=args.init_samples, plain=args.plain,
                           **(dict(model="linearised", dtype="float64")
                              if args.linearised else {}))
            res["rows"].append(row)
            print(_line(row), flush=True)
    res["seconds"], res["load_after"] = time.perf_counter() - t0, os.getloadavg()[0]
    print(f"total {res['seconds']:.0f} s, load {res['load_before']:.1f} -> "
          f"{res['load_after']:.1f}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
