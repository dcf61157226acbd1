"""Regenerate every paper-style figure from ``paper_repro/*.toml``.

    python figures/make_figures.py            # full settings (make figures)
    python figures/make_figures.py --fast     # tiny settings (make figures-fast, CI)

Each experiment file holds an ``[experiment]`` table (kind, title, figure
name, its own parameters) on top of ``paper_repro/base.toml``.  Every run (one
prediction or one training) is cached in ``figures/cache/`` under a hash of
everything it depends on, so unchanged configurations are not recomputed.
Figures are written as PNG and PDF into ``figures/`` (``figures/fast/`` with
``--fast``) and a ``summary.json`` with the agreement figures measured.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ntkdyn as nd  # noqa: E402
from ntkdyn import graphs  # noqa: E402
from ntkdyn.config.experiment import from_config  # noqa: E402
from ntkdyn.config.schema import config_from_dict  # noqa: E402
from ntkdyn.dynamics import stability as spectrum  # noqa: E402
from ntkdyn.dynamics.run import run_problem  # noqa: E402
from ntkdyn.training.trainer import train  # noqa: E402
from ntkdyn.validation import agreement  # noqa: E402
from ntkdyn.validation.edge import measure_edge  # noqa: E402

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

FAST = {"data": {"n_train": 48, "n_test": 24, "classes": [0, 1, 2]},
        "partition": {"agents": 4}, "architecture": {"width": 64, "depth": 1},
        "training": {"steps": 40, "record_every": 10}}
FAST_EXPERIMENT = {"widths": [64, 256], "edge_steps": 40, "edge_bisections": 1,
                   "topologies": ["ring", "complete"], "alphas": [0.1, 100.0],
                   "local_steps": [1, 4], "ce_steps": 40, "sgd_samples": 8,
                   "n_train": 48, "n_test": 24}

#: bump when what a run computes changes (the cache key includes it)
CACHE_VERSION = 3
PRED, NONLIN, LIN = "predicted", "nonlinear", "linearised"
STYLE = {PRED: dict(ls="--", color="black", lw=1.8), NONLIN: dict(ls="-", color="tab:blue", lw=1.6),
         LIN: dict(ls="-", color="tab:orange", lw=1.0, alpha=0.8)}
LABEL = {PRED: "predicted (kernel space)", NONLIN: "observed: real network",
         LIN: "observed: linearised network (under the prediction: exact for it)"}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class Runner:
    """Runs predictions / trainings with an on-disk cache keyed by their inputs."""

    def __init__(self, cache: Path, fast: bool):
        self.cache = cache
        self.fast = fast
        cache.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _path(self, kind: str, raw: dict, extra: dict) -> Path:
        blob = json.dumps({"kind": kind, "raw": raw, "extra": extra, "v": nd.__version__,
                           "cache": CACHE_VERSION},
                          sort_keys=True, default=str)
        return self.cache / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.npz"

    def cached(self, path: Path, compute, load, save):
        """``load(path)`` when cached, else ``compute()``, written with ``save(out, path)``."""
        if path.is_file():
            self.hits += 1
            return load(path)
        self.misses += 1
        out = compute()
        save(out, path)
        return out

    def cached_trajectory(self, kind: str, raw: dict, extra: dict, compute) -> nd.Trajectory:
        """A :class:`~ntkdyn.Trajectory` computed by ``compute()``, cached under its inputs."""
        return self.cached(self._path(kind, raw, extra), compute, nd.Trajectory.load,
                           lambda traj, path: traj.save(path))

    def trajectory(self, kind: str, raw: dict, **extra) -> nd.Trajectory:
        def compute():
            cfg = config_from_dict(raw)
            exp = from_config(cfg)
            t = cfg.training
            lr = extra.get("lr", t.lr)
            if kind == PRED:
                # the full empirical kernel (with its output blocks) makes the prediction
                # exact for the linearised network; the analytic kernel is traced by
                # construction
                kernel = extra.get("kernel", "empirical")
                problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel=kernel,
                                           seed=cfg.seed, f0="network", traced=False)
                # the exact lr* of every run is not needed here (experiments 3 and 4
                # compute it); the status comes from the trajectory (below)
                return run_problem(problem, t.algorithm, [lr], cfg.steps,
                                   check_stability=False, metadata={"kernel": kernel})[0]
            return train(exp.arch, exp.parts, exp.mixing, lr, t.algorithm, cfg.steps,
                         seed=cfg.seed, model="linearised" if kind == LIN else "nonlinear",
                         dtype="float64" if kind == LIN else "float32")

        traj = self.cached_trajectory(kind, raw, extra, compute)
        # a blow-up seen in the trajectory itself is a divergence, as ntkdyn validate says
        # (the solver's own bound is 1e8 x the first step: a prediction at 1.8 lr* had
        # grown to a test loss of 1e16 within 40 steps and still read "ok")
        return agreement.with_growth_status(traj) if kind == PRED else traj

    def json(self, kind: str, raw: dict, compute, **extra) -> dict:
        return self.cached(self._path(kind, raw, extra).with_suffix(".json"), compute,
                           lambda path: json.loads(path.read_text()),
                           lambda out, path: path.write_text(json.dumps(out, default=float)))


def lr_star_of(raw: dict, algorithm: str = "dgd") -> float:
    cfg = config_from_dict(raw)
    exp = from_config(cfg)
    problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel="empirical",
                               seed=cfg.seed, f0="network", traced=False)
    return spectrum.max_stable_lr(problem, algorithm)[0]


def _pos(y):
    """Values for a log axis: non-positive ones (e.g. consensus 0 at step 0) are not drawn."""
    y = np.asarray(y, float)
    return np.where(y > 0, y, np.nan)


def _log_y(ax) -> None:
    """A log y axis labelled with plain numbers (0.3, 2, 10) instead of 3 x 10^-1; the
    minor ticks all labelled when no power of ten lies inside the axis, else those at 2 and
    5 only (all of them crowd the major labels)."""
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    no_decade = np.floor(np.log10(lo)) == np.floor(np.log10(hi))

    def two_and_five(v, _pos):  # with a decade inside, the minor ticks at 2 and 5 only
        mantissa = round(v / 10 ** np.floor(np.log10(v)))
        return f"{v:g}" if mantissa in (2, 5) else ""

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if no_decade
                                 else FuncFormatter(two_and_five))


def _with(raw: dict, **sections) -> dict:
    return _merge(raw, sections)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7})
    return plt


def _save(fig, out: Path, name: str) -> list[str]:
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=150)
        paths.append(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p))
    _pyplot().close(fig)
    return paths


# ------------------------------------------------------------------------------ experiments
def _errors(pred, obs, metric: str) -> dict:
    """Agreement of the network mean of ``metric`` (:mod:`ntkdyn.validation.agreement`): the
    pointwise relative error (max over the records), the same at the horizon, and the lenient
    ``max |pred - obs| / max |obs|``."""
    m = agreement.compare(pred, obs, metrics=(metric,))["metrics"][metric]
    return {"pointwise": m["mean"], "at_horizon": m["mean_at_horizon"],
            "max_gap_over_max_obs": m["mean_max_gap_over_max_obs"]}


def run_dynamics(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    plt = _pyplot()
    tops, metrics = spec["topologies"], spec["metrics"]
    ylabel = {"param_dist": r"$\|\theta_q-\theta_0\|$", "consensus_dist":
              r"$\|\theta_q-\bar\theta\|$", "train_loss": "train loss", "test_loss": "test loss",
              "test_acc": "test accuracy"}
    fig, axes = plt.subplots(len(metrics), len(tops), figsize=(max(1.45 * len(tops) + 1.2, 6.0),
                             1.5 * len(metrics) + 0.9), squeeze=False, sharex=True)
    summary = {}
    for j, top in enumerate(tops):
        r = _with(raw, topology={"name": top})
        lr = spec["lr_fraction"] * runner.json("lrstar", r, lambda r=r: {"v": lr_star_of(r)})["v"]
        runs = {k: runner.trajectory(k, r, lr=lr) for k in (PRED, NONLIN, LIN)}
        summary[top] = {"lr": lr, **{m: _errors(runs[PRED], runs[NONLIN], m) for m in metrics}}
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            colours = plt.get_cmap("tab10")
            for kind in (NONLIN, LIN, PRED):
                tr = runs[kind]
                arr = getattr(tr, m)
                log = m in ("train_loss", "test_loss", "consensus_dist")
                if m in ("train_loss", "test_loss", "test_acc") and kind != LIN:
                    for q in range(arr.shape[1]):
                        ax.plot(tr.steps, _pos(arr[:, q]) if log else arr[:, q],
                                ls=STYLE[kind]["ls"], color=colours(q), lw=0.6, alpha=0.6)
                mean = arr.mean(axis=1)
                ax.plot(tr.steps, _pos(mean) if log else mean, **STYLE[kind],
                        label=LABEL[kind] + " (mean)")
            if m in ("train_loss", "test_loss", "consensus_dist"):
                _log_y(ax)
            if i == 0:
                ax.set_title(f"{top}")
            if j == 0:
                ax.set_ylabel(ylabel[m])
            if i == len(metrics) - 1:
                ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if len(metrics) and metrics[0] in ("train_loss", "test_loss", "test_acc"):
        handles.append(plt.Line2D([], [], color="0.5", lw=0.6))
        labels.append("thin: individual agents, one colour each (dashed predicted, solid "
                      "observed)")
    import textwrap

    fig.legend(handles, [textwrap.fill(lab, 48) for lab in labels], loc="lower center",
               ncol=2, frameon=False)
    fig.suptitle(spec["title"] + " - width {}, {} agents".format(
        raw["architecture"]["width"], raw["partition"]["agents"]))
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    return {"files": _save(fig, out, spec["figure"]), "metric": agreement.DEFINITION,
            "agreement": summary}


def run_algorithms(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    plt = _pyplot()
    r = _with(raw, topology={"name": spec["topology"]})
    stars = {a: runner.json("lrstar", r, lambda a=a: {"v": lr_star_of(r, a)}, algorithm=a)["v"]
             for a in spec["algorithms"]}
    safe = 0.5 * stars["dgd"]
    between = float(np.sqrt(stars["dgd"] * stars["atc"]))
    fig, axes = plt.subplots(2, 3, figsize=(7.2, 4.2), sharex=True)
    summary = {"lr_star": stars, "rates": {"safe": safe, "between": between}, "status": {}}
    for i, (tag, lr) in enumerate((("safe", safe), ("between", between))):
        for j, algo in enumerate(spec["algorithms"]):
            ra = _with(r, training={"algorithm": algo})
            ax = axes[i, j]
            tops = []  # the largest test loss of the runs that stayed ok
            for kind in (NONLIN, LIN, PRED):
                tr = runner.trajectory(kind, ra, lr=lr)
                summary["status"][f"{tag}/{algo}/{kind}"] = tr.status
                y = tr.network_mean("test_loss")
                ax.plot(tr.steps, y, **STYLE[kind], label=LABEL[kind])
                if tr.status == "ok" and len(y):
                    tops.append(float(np.nanmax(y)))
                if tr.status != "ok":  # top right, boxed: off the curves at the bottom
                    ax.annotate(f"{kind}: {tr.status}" + (f" at step {tr.diverged_at}"
                                                        if tr.diverged_at else ""),
                                xy=(0.97, 0.95 - 0.1 * (kind == LIN)), xycoords="axes fraction",
                                ha="right", va="top", fontsize=6, color=STYLE[kind]["color"],
                                bbox=dict(fc="white", ec="none", alpha=0.85, pad=1))
            ax.set_yscale("log")
            if tops and len(tops) < 3:  # a diverging run leaves the top, not squashing the rest
                ax.set_ylim(top=max(ax.get_ylim()[0] * 10, 100 * max(tops)))
            ax.set_title(f"{algo.upper()}, lr={lr:.3g} ({lr / stars[algo]:.2f} lr*)")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("test loss (network mean)")
            if i == 1:
                ax.set_xlabel("step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(spec["title"] + f" of {raw['partition']['agents']}: lr* DGD={stars['dgd']:.3g}, "
                 f"ATC={stars['atc']:.3g}, CTA={stars['cta']:.3g} (linearised dynamics)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return {"files": _save(fig, out, spec["figure"]), **summary}


def run_stability_map(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    plt = _pyplot()
    rows = []
    for top in spec["topologies"]:
        r = _with(raw, topology={"name": top})

        def compute(r=r, top=top):
            cfg = config_from_dict(r)
            exp = from_config(cfg)
            problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel="empirical",
                                       seed=cfg.seed, f0="network", traced=False)
            dgd, atc = spectrum.max_stable_lr(problem, "dgd")[0], \
                spectrum.max_stable_lr(problem, "atc")[0]
            edge = measure_edge(exp, dgd, steps=spec["edge_steps"],
                                bisections=spec["edge_bisections"])
            return {"topology": top, "lambda_min": graphs.lambda_min(exp.mixing),
                    "dgd_lr_star": dgd, "dgd_bound": spectrum.sufficient_bound(problem, "dgd"),
                    "atc_lr_star": atc, "atc_bound": spectrum.sufficient_bound(problem, "atc"),
                    "edge_converged": edge["converged_lr"], "edge_diverged": edge["diverged_lr"]}

        rows.append(runner.json("stability", r, compute, steps=spec["edge_steps"]))
    rows.sort(key=lambda x: (x["lambda_min"], x["dgd_lr_star"]))
    lam = np.array([x["lambda_min"] for x in rows])
    fig, ax = plt.subplots(figsize=(5.0, 3.9))
    ax.plot(lam, [x["dgd_lr_star"] for x in rows], "o", color="tab:blue",
            label="DGD lr* (exact, linearised)")
    ax.plot(lam, [x["dgd_bound"] for x in rows], "v", color="tab:blue", mfc="none",
            label="DGD sufficient bound")
    ax.plot(lam, [x["atc_lr_star"] for x in rows], "s", color="tab:green",
            label="ATC/CTA lr* (exact, linearised)")
    conv = np.array([np.nan if x["edge_converged"] is None else x["edge_converged"] for x in rows])
    div = np.array([np.nan if x["edge_diverged"] is None else x["edge_diverged"] for x in rows])
    ax.vlines(lam, conv, div, color="tab:red", lw=4, alpha=0.35)
    ax.plot(lam, conv, "^", color="tab:red", ms=5,
            label="DGD real network: last rate that converged")
    ax.plot(lam, div, "x", color="tab:red", ms=6, label="DGD real network: first that failed")
    # one label per drawn point, beside it; topologies whose points coincide (the hypercube
    # and the 2 x 4 torus of 8 agents are the same graph) share it
    points: dict[tuple, list[str]] = {}
    for x in rows:
        key = (round(x["lambda_min"], 6), round(float(np.log10(x["dgd_lr_star"])), 2))
        points.setdefault(key, []).append(x["topology"].replace("_", "-"))
    for (lam_x, log_lr), names in points.items():
        ax.annotate(" = ".join(names), (lam_x, 10 ** log_lr), fontsize=6,
                    textcoords="offset points", xytext=(6, -2), va="center")
    _log_y(ax)
    ax.set_xlim(lam.min() - 0.08, lam.max() + 0.12)
    ax.set_xlabel(r"$\lambda_{\min}(W)$ (Metropolis weights)")
    ax.set_ylabel("learning rate")
    ax.set_title(spec["title"] + f" ({raw['partition']['agents']} agents, width "
                 f"{raw['architecture']['width']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2,
              frameon=False)
    fig.tight_layout()
    return {"files": _save(fig, out, spec["figure"]), "rows": rows}


def run_width(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    from matplotlib.ticker import NullLocator

    plt = _pyplot()
    widths = spec["widths"]
    r0 = _with(raw, architecture={"width": widths[-1]})
    lr = spec["lr_fraction"] * runner.json("lrstar", r0, lambda: {"v": lr_star_of(r0)})["v"]
    errs = {(k, m): [] for k in ("empirical", "analytic") for m in ("test_loss", "param_dist")}
    horizon = {key: [] for key in errs}
    for w in widths:
        r = _with(raw, architecture={"width": w})
        obs = runner.trajectory(NONLIN, r, lr=lr)
        for k in ("empirical", "analytic"):
            pred = runner.trajectory(PRED, r, lr=lr, kernel=k)
            for m in ("test_loss", "param_dist"):
                e = _errors(pred, obs, m)
                errs[(k, m)].append(e["pointwise"])
                horizon[(k, m)].append(e["at_horizon"])
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0))
    slopes = {}
    for ax, m in zip(axes, ("test_loss", "param_dist"), strict=True):
        for k, style in (("empirical", "o-"), ("analytic", "s--")):
            e = np.array(errs[(k, m)])
            slope, _ = agreement.fit_slope(widths, e)
            slopes[f"{k}/{m}"] = slope
            ax.loglog(widths, e, style, label=f"{k} NTK (slope {slope:.2f})")
        ref = np.array(errs[("empirical", m)])[0] * (np.array(widths) / widths[0]) ** -0.5
        ax.loglog(widths, ref, ":", color="0.5", label=r"$\propto$ width$^{-1/2}$")
        ax.set_xlabel("width")
        ax.set_xticks(widths, [str(w) for w in widths])  # the widths used, not decades
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylabel(r"$\max_t |\mathrm{pred}_t-\mathrm{obs}_t| / |\mathrm{obs}_t|$")
        ax.set_title("network-mean " + ("test loss" if m == "test_loss" else
                                        r"$\|\theta-\theta_0\|$"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(spec["title"] + f", lr={lr:.3g}")
    fig.tight_layout()
    table = {f"{k}/{m}": dict(zip(map(str, widths), map(float, v), strict=True))
             for (k, m), v in errs.items()}
    at_end = {f"{k}/{m}": dict(zip(map(str, widths), map(float, v), strict=True))
              for (k, m), v in horizon.items()}
    return {"files": _save(fig, out, spec["figure"]), "metric": agreement.DEFINITION,
            "slopes": slopes, "errors": table, "errors_at_horizon": at_end}


def run_noniid(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    plt = _pyplot()
    alphas = spec["alphas"]
    fig, axes = plt.subplots(1, len(alphas), figsize=(2.4 * len(alphas), 2.8), sharey=True)
    summary = {}
    for ax, alpha in zip(np.atleast_1d(axes), alphas, strict=True):
        r = _with(raw, partition={"scheme": "dirichlet", "alpha": alpha})
        lr = spec["lr_fraction"] * runner.json("lrstar", r, lambda r=r: {"v": lr_star_of(r)})["v"]
        pred, obs = runner.trajectory(PRED, r, lr=lr), runner.trajectory(NONLIN, r, lr=lr)
        colours = plt.get_cmap("tab10")
        for q in range(pred.num_agents):
            ax.plot(obs.steps, 1 - obs.test_acc[:, q], "-", color=colours(q), lw=0.9)
            ax.plot(pred.steps, 1 - pred.test_acc[:, q], "--", color=colours(q), lw=0.9)
        summary[str(alpha)] = {"final_test_error_predicted": (1 - pred.test_acc[-1]).tolist(),
                               "final_test_error_observed": (1 - obs.test_acc[-1]).tolist()}
        ax.set_title(rf"Dirichlet $\alpha$={alpha:g}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("test error (per agent)")
    handles = [plt.Line2D([], [], color="k", ls="-"), plt.Line2D([], [], color="k", ls="--")]
    fig.legend(handles, ["observed (real network)", "predicted"], loc="lower center", ncol=2,
               frameon=False)
    fig.suptitle(spec["title"] + f"\nwidth {raw['architecture']['width']}, "
                 f"{raw['partition']['agents']} agents, one colour per agent")
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    return {"files": _save(fig, out, spec["figure"]), **summary}


def _cached_run(runner: Runner, kind: str, raw: dict, lr: float) -> nd.Trajectory:
    """One prediction (empirical NTK) or real-network training of ``raw``'s algorithm with
    its options (``algorithm_of``), cached like :meth:`Runner.trajectory`."""
    def compute():
        cfg = config_from_dict(raw)
        exp = from_config(cfg)
        if kind == PRED:
            return nd.predict(exp.arch, exp.parts, exp.mixing, lr, exp.algorithm, cfg.steps,
                              kernel="empirical", seed=cfg.seed, f0="network", traced=False)
        return train(exp.arch, exp.parts, exp.mixing, lr, exp.algorithm, cfg.steps,
                     seed=cfg.seed, model="nonlinear", dtype="float32")

    return runner.cached_trajectory(kind, raw, {"lr": lr, "schedule": "options"}, compute)


def oscillation_amplitude(traj: nd.Trajectory) -> float:
    """How far the record after the local phase leaves the consensus trend: the mean over
    the last half of the rounds of |l_local(k) - (l_cons(k-1) + l_cons(k)) / 2|, l the
    network-mean test loss (positive excursions: the local phase drifts away)."""
    local = traj.at_phase("local").network_mean("test_loss")
    cons = traj.at_phase("consensus").network_mean("test_loss")
    excursion = local[1:] - 0.5 * (cons[:-1] + cons[1:])
    half = len(excursion) // 2
    return float(np.mean(np.abs(excursion[half:])))


def run_p2pl(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    plt = _pyplot()
    alphas, locals_ = spec["alphas"], spec["local_steps"]
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(alphas)))
    amp = {PRED: {}, NONLIN: {}}
    runs = {}
    lrs = {}
    bases = {alpha: _with(raw, partition={"scheme": "dirichlet", "alpha": alpha})
             for alpha in alphas}

    def bound(r):
        cfg = config_from_dict(r)
        exp = from_config(cfg)
        problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel="empirical",
                                   seed=cfg.seed, f0="network", traced=False)
        return {"v": spectrum.sufficient_bound(problem, "atc")}

    # 2 / max_q lambda_max(Theta_qq)/N_q: every local step is non-expansive and so is W, so
    # every P2PL(L, C) is stable below it (ATC's lr* can be larger, P2PL(L > 1)'s not); one
    # rate for all partitions, so that the amplitudes compare
    lr = spec["lr_fraction"] * min(runner.json("localbound", b, lambda b=b: bound(b))["v"]
                                   for b in bases.values())
    for alpha in alphas:
        base = bases[alpha]
        lrs[str(alpha)] = lr
        for steps in locals_:
            r = _with(base, training={"local_steps": steps})
            for kind in (PRED, NONLIN):
                tr = _cached_run(runner, kind, r, lr)
                runs[(alpha, steps, kind)] = tr
                amp[kind][(alpha, steps)] = oscillation_amplitude(tr)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.6, 3.6),
                                  gridspec_kw={"width_ratios": [1, 1.25]})
    for c, alpha in zip(colours, alphas, strict=True):
        obs = [amp[NONLIN][(alpha, s)] for s in locals_]
        pred = [amp[PRED][(alpha, s)] for s in locals_]
        ax.plot(locals_, obs, "o-", color=c, lw=1.6, label=rf"$\alpha$={alpha:g}: real network")
        ax.plot(locals_, pred, "s--", color=c, lw=1.2, mfc="none",
                label=rf"$\alpha$={alpha:g}: predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(locals_, [str(s) for s in locals_])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("local steps per round")
    ax.set_ylabel("oscillation amplitude of the test loss")
    ax.set_title("excursion of the after-local record\nfrom the consensus trend", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    alpha, steps = alphas[0], locals_[-1]
    first = int(spec.get("zoom_from", 10))  # late rounds: the zig-zag, not the initial drop
    for kind in (NONLIN, PRED):
        tr = runs[(alpha, steps, kind)]
        t = tr.steps + np.where(tr.phase == 0, -0.5, 0.0)  # local record mid-round
        keep = t >= first - 0.5
        ax2.plot(t[keep], tr.network_mean("test_loss")[keep], **STYLE[kind],
                 marker="o" if kind == NONLIN else None, ms=2.5, label=LABEL[kind])
    ax2.set_xlabel("round (after local phase at k - 1/2, after consensus at k)")
    ax2.set_ylabel("test loss (network mean)")
    ax2.set_title(rf"$\alpha$={alpha:g}, {steps} local steps per round, rounds $\geq${first}")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6)
    fig.legend(handles, labels, loc="lower left", ncol=3, fontsize=6, frameon=False,
               bbox_to_anchor=(0.02, 0.0))
    fig.suptitle(spec["title"] + " - width {}, {} agents, ring".format(
        raw["architecture"]["width"], raw["partition"]["agents"]))
    fig.tight_layout(rect=(0, 0.12, 1, 0.93))
    table = {f"alpha={a:g}/L={s}": {"predicted": amp[PRED][(a, s)],
                                     "observed": amp[NONLIN][(a, s)]}
             for a in alphas for s in locals_}
    return {"files": _save(fig, out, spec["figure"]), "lr": lrs, "amplitude": table}


def _init32(exp, cfg):
    """The initialisation drawn as the prediction draws it, rounded to float32 (the real
    networks' dtype) and handed back in float64: the same network on both sides (as
    :func:`ntkdyn.validation.validate` does)."""
    import jax

    from ntkdyn.models import init_params

    return jax.tree.map(lambda a: np.asarray(a, np.float32).astype(np.float64),
                        init_params(exp.arch, exp.parts.dataset.dim, cfg.seed))


def ce_trajectory(runner: Runner, kind: str, raw: dict, **extra) -> nd.Trajectory:
    """Prediction (``kind = PRED``; ``extra["traced"]``) or real float32 training
    (``NONLIN``) with the configuration's loss and mini-batches (training on the batches
    of sequence 0, the prediction's sampled sequences otherwise), from one initialisation."""
    def compute():
        cfg = config_from_dict(raw)
        exp = from_config(cfg)
        params = _init32(exp, cfg)
        if kind == PRED:
            problem = nd.build_problem(exp.arch, exp.parts, exp.mixing, kernel="empirical",
                                       seed=cfg.seed, params=params, f0="network",
                                       traced=extra.get("traced", False), **exp.loss)
            return run_problem(problem, exp.algorithm, [cfg.training.lr], cfg.steps,
                               check_stability=False, metadata={"kernel": "empirical"},
                               samples=exp.samples, seed=cfg.seed, **exp.minibatch)[0]
        return train(exp.arch, exp.parts, exp.mixing, cfg.training.lr, exp.algorithm,
                     cfg.steps, params0=params, seed=cfg.seed, dtype="float32",
                     batch_sample=0, **exp.loss, **exp.minibatch)

    return runner.cached_trajectory(f"ce-{kind}", raw, extra, compute)


def run_cross_entropy(runner: Runner, raw: dict, spec: dict, out: Path) -> dict:
    """Cross-entropy training predicted against real networks (per agent, test loss and
    accuracy), and the mini-batch SGD band with the real network of sequence 0 inside it."""
    plt = _pyplot()
    r = _with(raw, topology={"name": spec["topology"]},
              data={"n_train": spec["n_train"], "n_test": spec["n_test"]},
              training={"algorithm": spec["algorithm"], "lr": spec["lr"],
                        "loss": "cross_entropy", "steps": spec["ce_steps"], "record_every": 10})
    pred, obs = ce_trajectory(runner, PRED, r), ce_trajectory(runner, NONLIN, r)
    where = (f"{spec['algorithm'].upper()} on a {spec['topology']} of "
             f"{raw['partition']['agents']} agents, width {raw['architecture']['width']}, "
             f"lr {spec['lr']:g}")
    summary = {"full_batch": {m: _errors(pred, obs, m) for m in ("test_loss", "test_acc")}}
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.4), sharex=True)
    colours = plt.get_cmap("tab10")
    ylabel = {"test_loss": "test cross-entropy (nats)", "test_acc": "test accuracy"}
    for ax, m in zip(axes, ("test_loss", "test_acc"), strict=True):
        for tr, ls in ((obs, "-"), (pred, "--")):
            arr = getattr(tr, m)
            for q in range(arr.shape[1]):
                ax.plot(tr.steps, arr[:, q], ls=ls, color=colours(q % 10), lw=0.7, alpha=0.5)
            ax.plot(tr.steps, arr.mean(axis=1), ls=ls, color="black", lw=2.0)  # network mean
        e = summary["full_batch"][m]["pointwise"]
        ax.set_title(f"{ylabel[m].split(' (')[0]} per agent (network mean within "
                     f"{100 * e:.1f} %)")
        ax.set_ylabel(ylabel[m])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="black", ls="-", lw=2.0),
               plt.Line2D([], [], color="black", ls="--", lw=2.0)]
    fig.legend(handles, ["real network (float32): thick network mean, thin one colour "
                         "per agent", "predicted (kernel space, empirical NTK), same"],
               loc="lower center", ncol=2, frameon=False, fontsize=7)
    fig.suptitle(f"{spec['title']}, full batch: {where}")
    fig.tight_layout(rect=(0, 0.08, 1, 0.94))
    files = _save(fig, out, spec["figure"])

    rb = _with(r, training={"batch_size": spec["batch_size"], "samples": spec["sgd_samples"]})
    band = ce_trajectory(runner, PRED, rb)
    real = ce_trajectory(runner, NONLIN, rb)
    seq0 = band.sequence(0)
    summary["sgd"] = {"batch_size": spec["batch_size"], "samples": spec["sgd_samples"],
                      "kernel": "empirical, full",
                      "coverage": "fraction of records after step 0 (where the band has "
                                  "zero width) with the real network inside the 5-95 % band"}
    fig, axes = plt.subplots(2, 2, figsize=(7.6, 5.6), sharex=True)
    for j, m in enumerate(("test_loss", "test_acc")):
        per = band.per_sample[m].mean(axis=-1)  # (S, T): network mean of every sequence
        lo, hi = np.quantile(per, [0.05, 0.95], axis=0)
        centre = per.mean(axis=0)
        cover = agreement.band_coverage(per, real.network_mean(m))
        summary["sgd"][m] = {"coverage_5_95": cover, "vs_sequence_0": _errors(seq0, real, m),
                             "band_width_at_horizon": float(hi[-1] - lo[-1])}
        # top: the curves; bottom: the same minus the predicted mean over the sequences
        for ax, shift in ((axes[0, j], 0.0), (axes[1, j], centre)):
            ax.fill_between(band.steps, lo - shift, hi - shift, color="tab:blue", alpha=0.3,
                            lw=0, label=f"predicted 5-95 % band ({spec['sgd_samples']} "
                                        "batch sequences; narrow: see the lower row)")
            ax.plot(band.steps, centre - shift, ls="--", color="tab:blue", lw=1.2,
                    label="predicted mean over sequences")
            ax.plot(seq0.steps, seq0.network_mean(m) - shift, ls=":", color="black", lw=1.4,
                    label="predicted, sequence 0")
            ax.plot(real.steps, real.network_mean(m) - shift, ls="-", color="tab:red", lw=1.4,
                    label="real network on sequence 0's batches")
            ax.grid(alpha=0.3)
        axes[0, j].set_title(f"network mean; real inside the band at {100 * cover:.0f} % "
                             "of records", fontsize=8)
        axes[0, j].set_ylabel(ylabel[m])
        axes[1, j].set_ylabel("minus predicted mean" + (" (nats)" if j == 0 else ""))
        axes[1, j].set_xlabel("step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(f"{spec['title']}, mini-batch SGD (batch {spec['batch_size']} per agent): "
                 f"{where}")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    files += _save(fig, out, spec["sgd_figure"])
    return {"files": files, "metric": agreement.DEFINITION, "agreement": summary}


KINDS = {"dynamics": run_dynamics, "algorithms": run_algorithms,
         "stability_map": run_stability_map, "width": run_width, "noniid": run_noniid,
         "p2pl": run_p2pl, "cross_entropy": run_cross_entropy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--only", default="", help="comma-separated experiment file prefixes")
    ap.add_argument("--out", default=None, help="output folder")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "figures" / ("fast" if args.fast else "")
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(ROOT / "figures" / "cache" / ("fast" if args.fast else "full"), args.fast)
    base = tomllib.loads((ROOT / "paper_repro" / "base.toml").read_text())
    if args.fast:
        base = _merge(base, FAST)
    results = {}
    t0 = time.perf_counter()
    for path in sorted((ROOT / "paper_repro").glob("[0-9]*.toml")):
        if args.only and not any(path.name.startswith(p) for p in args.only.split(",")):
            continue
        spec = tomllib.loads(path.read_text())
        exp = spec.pop("experiment")
        raw = _merge(base, spec)
        if args.fast:
            exp.update({k: v for k, v in FAST_EXPERIMENT.items() if k in exp})
        t = time.perf_counter()
        results[path.stem] = KINDS[exp["kind"]](runner, raw, exp, out)
        results[path.stem]["seconds"] = time.perf_counter() - t
        print(f"{path.stem}: {results[path.stem]['seconds']:.1f} s -> "
              f"{', '.join(results[path.stem]['files'])}", flush=True)
    results["total_seconds"] = time.perf_counter() - t0
    results["cache"] = {"hits": runner.hits, "misses": runner.misses}
    summary_file = out / "summary.json"
    if args.only and summary_file.exists():  # keep the other experiments' entries
        results = {**json.loads(summary_file.read_text()), **results}
    summary_file.write_text(json.dumps(results, indent=2, default=float))
    print(f"total {results['total_seconds']:.1f} s (cache hits {runner.hits}, "
          f"misses {runner.misses})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
