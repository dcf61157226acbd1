"""Mini-batch SGD: how often the real network lies inside the predicted 5-95 % band.

Usage::

    python validate/sgd_band_coverage.py [--band sequence|default] [--config TOML]
        [--seeds 10] [--widths 256,1024] [--batch 10] [--samples 64] [--steps 200]
        [--record-every 10] [--width-samples 16] [--json FILE]

``--band default`` (issue 15; default config ``validate/suites/sgd/ring_atc.toml``, squared
loss): the bands a user is promised.  Per width, ONE prediction (seed 1000, independent of
the networks trained): the analytic kernel with ``f0="random"``, whose ``samples`` sampled
networks each draw their own ``f_0`` and batch sequence (the joint init+batch band,
``traj.band(m)``), and ``width=n`` with ``--width-samples`` empirical kernels (the
calibrated band, ``traj.band(m, .05, .95, over="calibrated")``: the joint band with the
finite-width band's variance added and the shift of the mean, widened by
``CALIBRATED_C``, fitted on full-batch configurations only).  Then ``--seeds`` real
float32 networks, seed ``s`` drawing both the initialisation and the batch sequence
(``train(..., seed=s, batch_sample=0)``, as ``ntkdyn validate``), all on the config's
data and shards (its ``seed``, unchanged); coverage of their test
loss (per agent, and network mean) over the records after step 0, mean [min, max] over
the seeds.  A cross-entropy config (``training.loss``, e.g.
``validate/suites/sgd/ring_dgd_ce.toml``) runs the same way: there the width draws run
mini-batch SGD on the prediction's own ``f_0`` draws and batch sequences, which are the
paired draws (``theory/finite_width.md`` section 7).

``--band sequence`` (the old mode, default config ``suites/cross_entropy/ring_atc.toml``):
for every seed and width: one initialisation (float32-rounded, as
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


#: seed of the default-mode predictions (the f0 / batch draws of the joint band and the
#: width kernels' networks ``PRED_SEED ..``): independent of the seeds trained (0 .. S-1)
PRED_SEED = 1000


def _experiment(raw: dict, width: int):
    """``(cfg, exp)`` of ``raw`` with hidden width ``width``; the config's own ``seed``
    (data and partition) is kept: every network and prediction sees the same shards."""
    import copy

    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import config_from_dict

    raw = copy.deepcopy(raw)
    raw["architecture"]["width"] = width
    cfg = config_from_dict(raw)
    return cfg, from_config(cfg)


def predict_default(raw: dict, width: int, width_samples: int) -> dict:
    """The default-mode bands at ``width``: ``nd.predict`` with the analytic kernel,
    ``f0="random"`` (ONE random network: sampled network ``s`` draws its own ``f_0`` and
    batch sequence ``s``, seed :data:`PRED_SEED`) and ``width=width`` (``width_samples``
    empirical kernels).  Returns ``{"joint": (lo, hi), "calibrated": (lo, hi)}`` per
    metric view (``"agents"``: ``(T, Q)``; ``"mean"``: the network-mean ``(T, 1)``) and
    the prediction's cost."""
    import ntkdyn as nd
    from ntkdyn import bands

    cfg, exp = _experiment(raw, width)
    tic = time.perf_counter()
    traj = nd.predict(exp.arch, exp.parts, exp.mixing, cfg.training.lr, exp.algorithm,
                      cfg.steps, kernel="analytic", f0="random", seed=PRED_SEED,
                      samples=exp.samples, width=width, width_samples=width_samples,
                      reference=False, **exp.loss, **exp.minibatch)
    cost = time.perf_counter() - tic
    assert traj.metadata["band_over"] == "init+batch", traj.metadata.get("band_over")
    m = "test_loss"
    init, wd, paired = traj.draws[m], traj.width_draws[m], traj.width_draws[f"paired/{m}"]
    out = {"predict_s": cost, "steps": np.asarray(traj.steps)}
    for view, f in (("agents", lambda a: a), ("mean", lambda a: a.mean(-1, keepdims=True))):
        jlo, _, jhi = bands.band_from_draws(f(init))
        clo, _, chi = bands.calibrated_band(f(init), f(wd), width, paired_draws=f(paired))
        out[view] = {"joint": (jlo, jhi), "calibrated": (clo, chi)}
    return out


def run_default(raw: dict, seed: int, width: int, pred: dict) -> dict:
    """Coverage of the real network trained with ``seed`` (its initialisation AND its batch
    sequence drawn from the seed, as ``ntkdyn validate`` trains) by the default-mode bands
    ``pred`` (:func:`predict_default`): fraction of the records after step 0 (per agent,
    and of the network mean) inside each band."""
    import jax

    from ntkdyn.models import init_params
    from ntkdyn.training.trainer import train
    from ntkdyn.validation.coverage import coverage

    cfg, exp = _experiment(raw, width)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64),
                          init_params(exp.arch, exp.parts.dataset.dim, seed))
    tic = time.perf_counter()
    real = train(exp.arch, exp.parts, exp.mixing, cfg.training.lr, exp.algorithm, cfg.steps,
                 params0=params, seed=seed, dtype="float32", batch_sample=0, **exp.loss,
                 **exp.minibatch)
    obs = np.asarray(real.test_loss, float)  # (T, Q)
    if not np.array_equal(np.asarray(real.steps), pred["steps"]):
        raise ValueError("steps: the real run's records differ from the prediction's")
    row = {"seed": seed, "width": width, "status": real.status,
           "train_s": time.perf_counter() - tic,
           "test_loss_at_horizon": float(obs.mean(-1)[-1])}
    for band in ("joint", "calibrated"):
        lo, hi = pred["agents"][band]
        row[f"{band}_agents"] = coverage(obs[None], lo, hi)
        lo, hi = pred["mean"][band]
        row[f"{band}_mean"] = coverage(obs.mean(-1, keepdims=True)[None], lo, hi)
        row[f"{band}_width_at_horizon"] = float(np.mean(hi[-1] - lo[-1]))
    return row


def setting(raw: dict, args) -> str:
    """The first words of either mode's header: schedule, graph, loss, rate, batches."""
    t = raw["training"]
    return (f"{t['algorithm'].upper()} on a {raw['topology']['name']} of "
            f"{raw['partition']['agents']} agents, {t.get('loss', 'mse')}, lr {t['lr']:g}, "
            f"batch {args.batch} per agent, {args.steps} steps (records every "
            f"{args.record_every})")


def run_seeds(args, widths, one) -> list[dict]:
    """``one(seed, width)`` for every width and seed, each row printed as JSON on stderr."""
    rows = []
    for width in widths:
        for seed in range(args.seeds):
            row = one(seed, width)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def spread(values, fmt) -> str:
    """``mean [min, max]`` of ``values`` formatted by ``fmt``."""
    v = np.asarray(values, dtype=float)
    return f"{fmt(v.mean())} [{fmt(v.min())}, {fmt(v.max())}]"


def finish(args, rows, start) -> int:
    """The wall time line and the optional JSON dump shared by both modes."""
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    return 0


def main_default(args, raw: dict) -> int:
    """``--band default``: the coverage table of the joint init+batch band and the
    calibrated band (issue 15) over ``--seeds`` real networks per width."""
    widths = [int(w) for w in args.widths.split(",")]
    costs, preds, start = {}, {}, time.perf_counter()
    for width in widths:
        preds[width] = predict_default(raw, width, args.width_samples)
        costs[width] = preds[width]["predict_s"]
        print(f"width {width}: prediction {costs[width]:.1f} s", file=sys.stderr, flush=True)
    rows = run_seeds(args, widths, lambda seed, width: run_default(raw, seed, width,
                                                                   preds[width]))
    print(f"{setting(raw, args)}; prediction: analytic kernel, f0 random, {args.samples} "
          f"sampled networks (own f0 and batch sequence each, seed {PRED_SEED}), "
          f"{args.width_samples} width-n kernels; {args.seeds} real networks (seeds 0.."
          f"{args.seeds - 1}, float32, init and batches from the seed); coverage of the "
          "test loss by the 5-95 % band over the records after step 0: mean [min, max] over "
          "seeds")
    print("| band | width | per agent | network mean | band width at horizon (mean over "
          "agents) |")
    print("|---|---|---|---|---|")
    for band, name in (("joint", "joint init+batch (default)"),
                       ("calibrated", "calibrated, width=n")):
        for width in widths:
            sel = [r for r in rows if r["width"] == width]

            def cell(key, sel=sel):
                return spread([r[key] for r in sel], lambda x: f"{100 * x:.0f} %")

            wid = np.mean([r[f"{band}_width_at_horizon"] for r in sel])
            print(f"| {name} | {width} | {cell(band + '_agents')} | {cell(band + '_mean')} "
                  f"| {wid:.3g} |")
    print("prediction cost per width: " + ", ".join(f"{w}: {c:.1f} s" for w, c in
                                                     costs.items()))
    return finish(args, rows, start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--band", choices=("sequence", "default"), default="sequence",
                    help="sequence: the old mode (band over batch sequences of one given "
                         "network); default: the joint init+batch band of the default "
                         "prediction and the calibrated band with width=n")
    ap.add_argument("--width-samples", type=int, default=16)
    ap.add_argument("--config", default=None)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--widths", default="256,1024")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if args.config is None:
        args.config = str(HERE / "suites" / ("sgd/ring_atc.toml" if args.band == "default" else
                                             "cross_entropy/ring_atc.toml"))
    raw = tomllib.loads(Path(args.config).read_text())
    raw.pop("validation", None)
    raw["training"].update(batch_size=args.batch, samples=args.samples, steps=args.steps,
                           record_every=args.record_every)
    if args.band == "default":
        return main_default(args, raw)
    widths = [int(w) for w in args.widths.split(",")]
    start = time.perf_counter()
    rows = run_seeds(args, widths, lambda seed, width: run_one(raw, seed, width))
    print(f"{setting(raw, args)}, {args.samples} sampled sequences, {args.seeds} seeds; "
          "coverage by the 5-95 % band over the records after step 0: mean [min, max]")
    print("| width | real, network mean | real, per agent | predicted seq. 0 (ideal) | "
          "real vs seq. 0 pointwise error | band width at horizon |")
    print("|---|---|---|---|---|---|")
    for width in widths:
        sel = [r for r in rows if r["width"] == width]

        def cell(key, fmt=lambda x: f"{100 * x:.0f} %", sel=sel):
            return spread([r[key] for r in sel], fmt)

        print(f"| {width} | {cell('real_mean')} | {cell('real_agents')} | {cell('seq0_mean')} "
              f"| {cell('real_vs_seq0', lambda x: f'{100 * x:.2f} %')} "
              f"| {cell('band_width_at_horizon', lambda x: f'{x:.3g}')} |")
    return finish(args, rows, start)


if __name__ == "__main__":
    sys.exit(main())
