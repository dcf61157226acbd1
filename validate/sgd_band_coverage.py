"""Mini-batch SGD: how often the real network lies inside the predicted 5-95 % band.

Usage::

    python validate/sgd_band_coverage.py [--config validate/suites/cross_entropy/ring_atc.toml]
        [--seeds 10] [--widths 256,1024] [--batch 10] [--samples 64] [--steps 200]
        [--record-every 10] [--json FILE]

For every seed and width: one initialisation (float32-rounded, as
:func:`ntkdyn.validation.validate` draws it), the kernel-space prediction of ``samples``
sampled batch sequences (full empirical NTK of that network, ``f0 = "network"``) and the
real float32 network trained peer to peer on exactly the batches of sequence 0
(:func:`ntkdyn.training.trainer.train`, ``batch_sample = 0``); the seed draws both the
network and the batch sequences.  Reported per width, over the seeds (mean and range):
the coverage (:func:`ntkdyn.validation.agreement.band_coverage`: the fraction of records
after step 0 at which the curve lies inside the 5-95 % quantiles over the sequences) of

* the real network's network-mean test loss, and its agents' test losses (each agent
  against its own band, averaged over agents);
* for reference, the *predicted* sequence 0 itself (what a perfect prediction of the
  real network would score: one draw against its own band, about 0.9 on average but
  correlated over time), and
* the pointwise relative error of the real network against sequence 0's prediction
  (network-mean test loss), to tell finite-width error from sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def run_one(raw: dict, seed: int, width: int) -> dict:
    """Coverage figures of one (seed, width); ``raw`` is a configuration dictionary."""
    import copy

    import jax

    import ntkdyn as nd
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import config_from_dict
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.models import init_params
    from ntkdyn.training.trainer import train
    from ntkdyn.validation import agreement

    raw = copy.deepcopy(raw)
    raw["seed"] = seed
    raw["architecture"]["width"] = width
    cfg = config_from_dict(raw)
    exp = from_config(cfg)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64),
                          init_params(exp.arch, exp.parts.dataset.dim, seed))
    tic = time.perf_counter()
    problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel="empirical", seed=seed,
                               params=params, f0="network", traced=False, **exp.loss)
    band = run_problem(problem, exp.algorithm, [cfg.training.lr], cfg.steps,
                       check_stability=False, samples=exp.samples, seed=seed,
                       reference=False, **exp.minibatch)[0]
    t_pred = time.perf_counter() - tic
    tic = time.perf_counter()
    real = train(exp.arch, exp.parts, exp.mixing, cfg.training.lr, exp.algorithm, cfg.steps,
                 params0=params, seed=seed, dtype="float32", batch_sample=0, **exp.loss,
                 **exp.minibatch)
    t_train = time.perf_counter() - tic
    per = np.asarray(band.per_sample["test_loss"], float)  # (S, T, Q)
    seq0 = band.sequence(0)
    obs = np.asarray(real.test_loss, float)  # (T, Q)
    q = obs.shape[1]
    return {
        "seed": seed, "width": width, "status": real.status,
        "real_mean": agreement.band_coverage(per.mean(-1), obs.mean(-1)),
        "real_agents": float(np.mean([agreement.band_coverage(per[..., a], obs[:, a])
                                      for a in range(q)])),
        "seq0_mean": agreement.band_coverage(per.mean(-1), per[0].mean(-1)),
        "real_vs_seq0": agreement.pointwise_error(seq0.network_mean("test_loss"),
                                                  real.network_mean("test_loss")),
        "band_width_at_horizon": float(np.diff(np.quantile(per.mean(-1)[:, -1],
                                                           [0.05, 0.95]))[0]),
        "test_loss_at_horizon": float(obs.mean(-1)[-1]),
        "predict_s": t_pred, "train_s": t_train,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "suites" / "cross_entropy" / "ring_atc.toml"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--widths", default="256,1024")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    raw = tomllib.loads(Path(args.config).read_text())
    raw.pop("validation", None)
    raw["training"].update(batch_size=args.batch, samples=args.samples, steps=args.steps,
                           record_every=args.record_every)
    widths = [int(w) for w in args.widths.split(",")]
    rows, start = [], time.perf_counter()
    for width in widths:
        for seed in range(args.seeds):
            row = run_one(raw, seed, width)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    t = raw["training"]
    print(f"{t['algorithm'].upper()} on a {raw['topology']['name']} of "
          f"{raw['partition']['agents']} agents, {t.get('loss', 'mse')}, lr {t['lr']:g}, "
          f"batch {args.batch} per agent, {args.steps} steps (records every "
          f"{args.record_every}), {args.samples} sampled sequences, {args.seeds} seeds; "
          "coverage by the 5-95 % band over the records after step 0: mean [min, max]")
    print("| width | real, network mean | real, per agent | predicted seq. 0 (ideal) | "
          "real vs seq. 0 pointwise error | band width at horizon |")
    print("|---|---|---|---|---|---|")
    for width in widths:
        sel = [r for r in rows if r["width"] == width]

        def cell(key, pct=True, sel=sel):
            v = np.array([r[key] for r in sel])
            f = (lambda x: f"{100 * x:.0f} %") if key != "real_vs_seq0" else \
                (lambda x: f"{100 * x:.2f} %")
            if not pct:
                f = (lambda x: f"{x:.3g}")  # noqa: E731
            return f"{f(v.mean())} [{f(v.min())}, {f(v.max())}]"

        print(f"| {width} | {cell('real_mean')} | {cell('real_agents')} | {cell('seq0_mean')} "
              f"| {cell('real_vs_seq0')} | {cell('band_width_at_horizon', False)} |")
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
