"""``ntkdyn predict CONFIG --out DIR``: trajectory, summary and plot for a configuration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ntkdyn._utils.io import check_output, json_text, staged_output


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict trajectories for a TOML configuration")
    p.add_argument("config", help="TOML configuration (see examples/default.toml)")
    p.add_argument("--out", default="out/predict", help="output folder (default out/predict)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, interrupted=interrupted)


def interrupted(args) -> str:
    """What a Ctrl-C leaves behind (nothing: outputs move into --out only when complete)."""
    return f"nothing was written to {args.out} (outputs are moved there only when complete)"


#: what ``ntkdyn predict`` writes into ``--out``
OUTPUT_FILES = ("trajectory.npz", "summary.json", "summary.txt", "trajectory.png")


def run(args) -> int:
    from ntkdyn import prediction as pipeline
    from ntkdyn.config.experiment import from_config
    from ntkdyn.config.schema import load_config
    from ntkdyn.plotting import plot_trajectory

    cfg = load_config(args.config)
    check_output(args.out, files=OUTPUT_FILES)
    exp = from_config(cfg)
    t = cfg.training
    init = {"samples": exp.samples, **_initialisation(cfg, exp), **_width(cfg)}
    traj = pipeline.predict(exp.arch, exp.parts, exp.mixing, t.lr, exp.algorithm,
                            cfg.steps.astype(float) if t.continuous else cfg.steps,
                            kernel=cfg.prediction.kernel, seed=cfg.seed,
                            continuous=t.continuous, progress=not args.quiet,
                            kernel_dtype=cfg.prediction.kernel_dtype or None,
                            traced=not exp.full_empirical_kernel,  # check's layout
                            **init, **exp.low_rank, **exp.loss, **exp.minibatch)
    traj = _with_config(traj, cfg)
    with staged_output(args.out) as tmp:
        traj.save(tmp / "trajectory.npz")
        summary = _summary(traj, cfg)
        (tmp / "summary.json").write_text(json_text(summary))
        (tmp / "summary.txt").write_text(traj.summary() + "\n")
        title = _title(traj, cfg, exp, summary.get("low_rank"))
        plot_trajectory(traj, tmp / "trajectory.png", title=title)
    print(traj.summary())
    print(f"wrote {Path(args.out) / 'trajectory.npz'}, summary.json, summary.txt, "
          "trajectory.png")
    return 0


#: ``summary.json``'s ``stability`` when the run carries no report: the exact analysis runs
#: only where a rate could be unstable (above the schedule's sufficient bound, or no bound)
NO_STABILITY_REPORT = ("not computed for this run (the rate needed no exact analysis, or "
                       "this path runs none); status comes from the trajectory; ntkdyn "
                       "check gives lr* and the margin")


def _summary(traj, cfg) -> dict:
    """``summary.json``: status, final values, bands and what the run describes; keys that
    do not apply to this run are left out."""
    from ntkdyn.config.schema import applicable
    from ntkdyn.trajectory import last_mc_error, zero_run_name

    t = cfg.training
    mean_net = getattr(traj, "mean_network", None)
    summary = {
        "status": traj.status,
        "diverged_at": traj.diverged_at,
        "describes": traj.metadata.get("quantity"),
        "final_step": float(traj.steps[-1]) if len(traj.steps) else None,
        "loss": t.loss,
        "final_train_loss_mean": _last_mean(traj.train_loss),
        "final_test_loss_mean": _last_mean(traj.test_loss),
        "final_test_acc_mean": _last_mean(traj.test_acc),
        "final_consensus_dist_mean": _last_mean(traj.consensus_dist),
        "stability": traj.metadata.get("stability") or NO_STABILITY_REPORT,
        "phases": traj.phases or None,
        "gossip_samples": getattr(traj, "samples", None) if cfg.topology.gossip
        and not t.batch_size else None,
        "minibatch": _minibatch_summary(traj),
        "initialisation_samples": getattr(traj, "samples", None)
        if mean_net is not None else None,
        "final_test_loss_band_5_95": _last_band(traj, "test_loss"),
        "final_test_acc_band_5_95": _last_band(traj, "test_acc"),
        "final_test_loss_mc_error": last_mc_error(traj, "test_loss"),
        "final_test_acc_mc_error": last_mc_error(traj, "test_acc"),
        "final_test_loss_mean_network": None if mean_net is None
        else _last_mean(mean_net.test_loss),
        "final_test_acc_mean_network": None if mean_net is None
        else _last_mean(mean_net.test_acc),
        # what the *_mean_network keys are (with cross-entropy: not the mean network)
        "mean_network_is": None if mean_net is None else zero_run_name(t.loss),
        "final_test_loss_mean_of_mean_state": _last_mean(traj.expected.test_loss)
        if getattr(traj, "expected", None) is not None else None,
        "low_rank": _low_rank_summary(traj),
        "finite_width": _width_summary(traj),
        "config": applicable(cfg, "predict"),
    }
    for key in ("phases", "gossip_samples", "final_test_loss_mean_of_mean_state",
                "low_rank", "minibatch", "initialisation_samples",
                "final_test_loss_band_5_95", "final_test_acc_band_5_95",
                "final_test_loss_mc_error", "final_test_acc_mc_error",
                "final_test_loss_mean_network", "final_test_acc_mean_network",
                "mean_network_is", "finite_width"):
        if summary[key] is None:  # list only what applies to this run
            del summary[key]
    return summary


def _title(traj, cfg, exp, low: dict | None) -> str:
    """The plot's title: schedule, topology, agents, kernel, rate, loss, batches and which
    network the prediction describes."""
    t = cfg.training
    return (f"{exp.algorithm.label().upper()} on {_where(cfg)} ({cfg.partition.agents} "
            f"agents, {cfg.partition.scheme}), {cfg.prediction.kernel} NTK"
            + (f" rank {low['rank']}" if low else "") + f", lr={t.lr:g}"
            + (", cross-entropy" if t.loss == "cross_entropy" else "")
            + (f", mini-batch {t.batch_size} ({traj.samples} sequences)"
               if t.batch_size else "")
            + "\n" + _short_quantity(traj.metadata.get("quantity", ""),
                                      traj.metadata.get("band_over", "init"), cfg.training.loss)
            + (f"; hatched: {cfg.prediction.width_samples} networks of width "
               f"{cfg.prediction.width}" if cfg.prediction.width else ""))


def _initialisation(cfg, exp) -> dict:
    """``f0`` (and ``samples``, sampled networks, when f0 resolves to ``"random"``) for
    :func:`ntkdyn.predict` from ``[prediction] f0 / samples``."""
    from ntkdyn.prediction import resolve_f0

    f0 = cfg.prediction.f0 or None
    out = {} if f0 is None else {"f0": f0}
    resolved = resolve_f0(f0, cfg.prediction.kernel, loss=exp.loss["loss"],
                           mixing=exp.mixing, low_rank=bool(exp.low_rank),
                          batch_size=cfg.training.batch_size)
    if resolved == "random":
        # 0: with random gossip / mini-batch SGD the sequences' count (network s runs
        # sequence s: training.samples / topology.gossip_samples), else the library's default
        out["samples"] = cfg.prediction.samples or exp.samples or None
    return out


def _width(cfg) -> dict:
    """``width`` / ``width_samples`` for :func:`ntkdyn.predict` from ``[prediction] width``
    (the finite-width band; nothing when it is 0)."""
    p = cfg.prediction
    return {"width": p.width, "width_samples": p.width_samples} if p.width else {}


def _width_summary(traj):
    """The finite-width band's facts and its final 5-95 % bands (network mean over agents)
    for summary.json (``None`` without ``[prediction] width``)."""
    info = traj.metadata.get("finite_width")
    if info is None or not traj.width_draws:
        return None
    out = {k: info[k] for k in ("width", "samples", "seeds", "f0", "statuses", "note",
                                "dynamics")
           if k in info}
    for metric in ("test_loss", "test_acc", "train_loss"):
        if metric in traj.width_draws and len(traj.steps):
            lo, hi = traj.band(metric, 0.05, 0.95, over="width")
            out[f"final_{metric}_band_5_95"] = [float(lo[-1].mean()), float(hi[-1].mean())]
    return out


def _where(cfg) -> str:
    topo = cfg.topology
    if topo.sequence:
        return "+".join(topo.sequence)
    return topo.name + (f" ({topo.gossip} gossip)" if topo.gossip else "")


def _minibatch_summary(traj):
    """Mini-batch SGD facts and the final 5-95 % band of the test loss (``None`` when
    full batch)."""
    mb = traj.metadata.get("minibatch")
    if mb is None:
        return None
    out = dict(mb)
    if traj.test_loss is not None and len(traj.steps):
        lo, hi = traj.band("test_loss", 0.05, 0.95)
        out["final_test_loss_band_5_95_network_mean"] = [float(lo[-1].mean()),
                                                         float(hi[-1].mean())]
    return out


def _low_rank_summary(traj):
    """The low-rank path's facts for summary.json (``None`` on the exact path)."""
    low = traj.metadata.get("low_rank")
    if low is None:
        return None
    keys = ("rank", "requested_rank", "method", "landmarks", "error_estimate", "tol",
            "tol_reached", "discarded_norm_bound", "residual_trace", "seconds_total",
            "error_estimate_uncapped", "error_estimate_kind", "error_bound_trace",
            "probe_columns", "rank_needed_low", "rank_needed_high", "error_estimate_test",
            "error_estimate_test_kind", "test_probe_columns")
    return {k: low[k] for k in keys if k in low}


def _last_mean(arr):
    return None if arr is None or len(arr) == 0 else float(arr[-1].mean())


def _last_band(traj, metric: str):
    """``[low, high]``: the 5-95 % band of ``metric`` at the last record (mean over agents),
    ``None`` without a band."""
    if not traj.quantiles or metric not in traj.quantiles or not len(traj.steps):
        return None
    return [float(b[-1].mean()) for b in traj.band(metric, 0.05, 0.95)]


def _short_quantity(words: str, band_over: str = "init", loss: str = "mse") -> str:
    """The plot title's line saying which network the curves describe and, for one random
    network, what its 5-95 % band is over (``band_over``, a key of
    :data:`ntkdyn.dynamics.random_init.BAND_WORDS`: initialisations alone, or jointly with
    the mixing / mini-batch sequences) and what the dash-dot curve is (the run from
    ``f0 = 0``: not the mean network with cross-entropy, ``loss``)."""
    from ntkdyn.trajectory import zero_run_name

    if words.startswith("mean network"):
        return "mean network over random initialisations (f0 = 0), not one random network"
    if words.startswith("the network started from f0 = 0"):  # cross-entropy
        return "the network started from f0 = 0 (cross-entropy: not the mean network)"
    if words.startswith("one random network"):
        return (f"one random network: expected over initialisations, 5-95 % band "
                f"{_band_words(band_over)}; dash-dot: {zero_run_name(loss).split(' (')[0]}")
    return words.split(":")[0]


def _band_words(band_over: str) -> str:
    """Short form of :data:`~ntkdyn.dynamics.random_init.BAND_WORDS` ``[band_over]``: its
    words before any parenthesis or semicolon (``"over initialisations and mini-batch
    sequences jointly"``)."""
    from ntkdyn.dynamics.random_init import BAND_WORDS

    words = BAND_WORDS.get(band_over, BAND_WORDS["init"])
    return re.split(r" \(|;", words)[0]


def _with_config(traj, cfg):
    return dataclasses.replace(traj, metadata=dict(traj.metadata, config=cfg.to_dict()))
