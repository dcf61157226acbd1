"""``nd.width_for`` verified by training real networks at the width it returns (issue 14).

Usage::

    python validate/width_for_check.py [--tol 0.004] [--seeds 32] [--width-samples 32]
                                       [--dtype float32] [--out out/width_for_check.json]

The problem is the one on which the ``n^{-1/2}`` law holds (``tests/test_finite_width.py``,
README "Finite width"): digits, 40 train / 20 test, 4 agents (iid), ring (Metropolis),
a one-hidden-layer ``MLP`` (the package default activation and ``W_std``), DGD at
``lr = 0.3``, 100 steps, squared loss.  ``nd.width_for(metric="test_loss", tol,
widths=(128, 512), samples, f0="mean")`` returns a width ``n*``; then ``--seeds`` real
networks of width ``n*`` (network ``s`` initialised with seed ``s``, the seeds
``width_for`` / ``width_draws`` use with ``seed=0``) are trained with
:func:`ntkdyn.train.train` and the 5-95 % half-width of their final test loss (and
accuracy) is measured exactly as ``width_for`` measures the band's: ``1.645 sd`` over the
networks per agent, worst agent (:func:`ntkdyn.finite_width.half_width`).

What is compared with what.  ``width_for(f0="mean")`` sizes the spread, over networks of
width ``n``, of the *mean-network* linearised prediction under each network's empirical
NTK at initialisation (``f_0 = 0``).  A plainly trained network also carries its own
random initial outputs ``f_0(x)``, whose spread (the band over initialisations) does not
shrink with the width at all, so its loss spread cannot be held against ``tol``.  The
like-for-like real network is the **centred** one, ``g(x; theta) = f(x; theta) -
f(x; theta_0)``: the same parameters, the same gradients and so the same empirical NTK at
initialisation, but ``g_0 = 0`` exactly; trained with the nonlinear dynamics its kernel
moves as the plain network's does.  So the centred real networks' spread = the width
band (kernels at initialisation) + the kernel's motion during training + the
nonlinearity, and the script reports:

* ``centred``: the centred real networks' half-width at the horizon, against ``tol``;
* ``predicted_same_seeds``: the width band over the *same* ``S`` seeds
  (``width_draws(seed=0, f0="mean")``, network ``s`` = real network ``s``), and the
  per-seed gap real - linearised (the motion, seed by seed);
* ``plain``: the uncentred real networks' half-width (init spread included), beside the
  infinite-width band over initialisations of ``nd.predict(f0="random")``, for context.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR, STEPS, WIDTHS, METRICS = 0.3, 100, (128, 512), ("test_loss", "test_acc")


def problem():
    import ntkdyn as nd

    data = nd.data.digits(n_train=40, n_test=20, seed=0)
    parts = nd.data.partition(data, agents=4, scheme="iid", seed=0)
    W = nd.graphs.mixing(nd.graphs.topology("ring", 4))
    return parts, W, nd.models.MLP(hidden=(64,), out=10)


def centred(arch, params0):
    """A stax-style triple whose ``apply`` is ``f(x; theta) - f(x; theta_0)``."""
    import jax

    p0 = jax.tree.map(np.asarray, params0)

    def apply(params, x):
        ref = jax.tree.map(lambda a, b: a.astype(b.dtype), p0, params)
        return arch.apply(params, x) - arch.apply(ref, x)

    return (lambda *a: None, apply, lambda *a: None)


def final(traj, metric: str) -> np.ndarray:
    """Per-agent values at the last record, ``(Q,)``."""
    return np.asarray(getattr(traj, metric), dtype=np.float64)[-1]


def train_networks(arch, parts, W, seeds, dtype, centre: bool) -> dict:
    import ntkdyn as nd
    from ntkdyn import finite_width as fw

    out = {m: [] for m in METRICS}
    for s in seeds:
        model = arch
        if centre:
            model = centred(arch, next(fw.network_params(arch, parts.dataset.dim, [s])))
            params0 = next(fw.network_params(arch, parts.dataset.dim, [s]))
            traj = nd.train.train(model, parts, W, LR, "dgd", [0, STEPS], params0=params0,
                                  dtype=dtype)
        else:
            traj = nd.train.train(model, parts, W, LR, "dgd", [0, STEPS], seed=s, dtype=dtype)
        if traj.status != "ok":
            raise RuntimeError(f"seed {s}: training status {traj.status}")
        for m in METRICS:
            out[m].append(final(traj, m))
    return {m: np.stack(v) for m, v in out.items()}   # (S, Q)


def hw(values: np.ndarray) -> float:
    """Worst-agent 5-95 % half-width of ``(S, Q)`` final values (as ``width_for``)."""
    from ntkdyn import finite_width as fw

    return float(np.max(fw.half_width(values[:, None, :], 0.9)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=0.004)
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--width-samples", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--width", type=int, default=0, help="skip width_for, use this width")
    ap.add_argument("--no-plain", action="store_true")
    ap.add_argument("--out", default="out/width_for_check.json")
    args = ap.parse_args(argv)

    import ntkdyn as nd
    from ntkdyn import finite_width as fw

    parts, W, arch = problem()
    res: dict = {"tol": args.tol, "seeds": args.seeds, "dtype": args.dtype}
    t0 = time.time()
    if args.width:
        width = args.width
    else:
        est = nd.width_for(arch, parts, W, lr=LR, steps=STEPS, metric="test_loss",
                           tol=args.tol, widths=WIDTHS, samples=args.width_samples,
                           f0="mean")
        print(est, flush=True)
        width = est.width
        res["width_for"] = {"width": est.width, "constant": est.constant,
                            "slope": est.slope, "spreads": est.spreads,
                            "seconds": time.time() - t0}
    res["width"] = width
    net = fw.width_arch(arch, width)
    seeds = list(range(args.seeds))

    t0 = time.time()
    draws, _ = fw.width_draws(arch, parts, W, LR, "dgd", [0, STEPS], width=width,
                              samples=args.seeds, seed=0, f0="mean")
    lin = {m: draws[m][:, -1] for m in METRICS}
    res["predicted_same_seeds"] = {m: hw(lin[m]) for m in METRICS}
    res["predicted_seconds"] = time.time() - t0

    t0 = time.time()
    real = train_networks(net, parts, W, seeds, args.dtype, centre=True)
    res["train_centred_seconds"] = time.time() - t0
    gap = {m: real[m] - lin[m] for m in METRICS}
    res["centred"] = {m: hw(real[m]) for m in METRICS}
    res["centred_mean"] = {m: float(real[m].mean()) for m in METRICS}
    res["linearised_mean"] = {m: float(lin[m].mean()) for m in METRICS}
    res["gap_real_minus_linearised"] = {
        m: {"mean": float(gap[m].mean()), "sd": float(gap[m].std(ddof=1)),
            "max_abs": float(np.abs(gap[m]).max()),
            "corr": float(np.corrcoef(real[m].ravel(), lin[m].ravel())[0, 1])}
        for m in METRICS}
    print(json.dumps(res, indent=1), flush=True)

    if not args.no_plain:
        t0 = time.time()
        plain = train_networks(net, parts, W, seeds, args.dtype, centre=False)
        res["train_plain_seconds"] = time.time() - t0
        res["plain"] = {m: hw(plain[m]) for m in METRICS}
        res["plain_mean"] = {m: float(plain[m].mean()) for m in METRICS}
        band = nd.predict(arch, parts, W, lr=LR, steps=[0, STEPS], f0="random", samples=512,
                          seed=1000)
        res["init_band_infinite_width"] = {
            m: float(np.max(fw.half_width(np.asarray(band.draws[m]), 0.9))) for m in METRICS}
        res["init_band_mean"] = {m: float(np.asarray(getattr(band, m))[-1].mean())
                                 for m in METRICS}
    print(json.dumps(res, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
