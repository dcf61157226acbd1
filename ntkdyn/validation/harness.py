"""The validation harness: predicted against observed peer-to-peer training.

:func:`validate` takes a configuration (TOML path or :class:`~ntkdyn.config.schema.Config`)
and, for every width asked for,

1. trains the real nonlinear network, ``Q`` copies peer to peer
   (:func:`ntkdyn.training.trainer.train`, the configuration's topology, mixing matrix,
   algorithm, learning rate and partition);
2. trains the linearised network the same way;
3. predicts the same trajectory in closed form with the analytic and/or the
   empirical NTK (:func:`ntkdyn.dynamics.run`), from the *same* initialisation: the
   prediction starts from the network's own outputs at ``theta_0``
   (``f0 = "network"``) so that only the dynamics are compared;
4. measures agreement (:mod:`ntkdyn.validation.agreement`: the pointwise relative error
   ``max_t |pred_t - obs_t| / |obs_t|`` and the error at the horizon) and, with
   ``out``, writes every trajectory (``.npz``), ``agreement.json`` /
   ``agreement.txt`` and overlay figures (:mod:`ntkdyn.validation.overlay`); a width sweep
   adds ``width_sweep.png``.

The empirical kernel is the full one (``(N K) x (N K)``, exact for the
linearised network) when it takes at most ``FULL_KERNEL_MAX_BYTES``, else the
traced one (``Theta (x) I_K``); the layout used is recorded.

``training.continuous`` is ignored: networks are trained, and predicted, by the
discrete iteration.

Long runs: training checkpoints go to ``out/checkpoints/`` as chunks finish;
``resume=True`` continues from them (and reuses finished trainings); they are
removed when the whole validation has finished.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from ntkdyn._utils.io import json_text
from ntkdyn.config.experiment import FULL_KERNEL_MAX_BYTES as _FULL_BYTES
from ntkdyn.config.experiment import algorithm_of, build_arch, from_config
from ntkdyn.config.schema import Config, load_config
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.run import run_problem
from ntkdyn.models import describe as _describe
from ntkdyn.models import ensure_params_fit, init_params
from ntkdyn.prediction import build_problem
from ntkdyn.training.trainer import train
from ntkdyn.trajectory import Trajectory
from ntkdyn.validation import agreement

KERNEL_CHOICES = ("analytic", "empirical")
FULL_KERNEL_MAX_BYTES = _FULL_BYTES  # one rule, ntkdyn.config.experiment's
CHECKPOINT_INTERVAL_S = 30.0  # seconds between checkpoint writes of a training
ARPACK_MAX_DIM = 10_000  # beyond: no spectral radius for schedules without a crossing
HEADLINE_FIGURES = ("mean", "mean_at_horizon", "mean_max_gap_over_max_obs")
_OUTPUT_PATTERNS = ("observed.npz", "linearised.npz", "predicted_*.npz", "overlay_*.png",
                    "overlay_*.pdf", "agreement.json", "agreement.txt")


@dataclass(frozen=True)
class WidthResult:
    """Everything measured at one width."""

    width: int
    observed: Trajectory
    linearised: Trajectory | None
    predicted: dict[str, Trajectory]
    agreement: dict[str, dict]
    timings: dict

    def headline(self, figure: str = "mean") -> dict:
        """``{kernel: {metric: error of the network mean}}`` for the nonlinear network.

        ``figure``: ``"mean"`` (default: the pointwise relative error, maximum over the
        records), ``"mean_at_horizon"`` (at the last common record) or
        ``"mean_max_gap_over_max_obs"`` (the lenient figure);
        see :mod:`ntkdyn.validation.agreement`.
        """
        if figure not in HEADLINE_FIGURES:
            raise ValueError(f"figure: expected one of {HEADLINE_FIGURES}, got {figure!r}")
        return {k: {m: self.agreement[f"nonlinear vs {k}"]["metrics"].get(m, {}).get(figure)
                    for m in agreement.HEADLINE} for k in self.predicted}


@dataclass(frozen=True)
class ValidationResult:
    """Result of :func:`validate`: one :class:`WidthResult` per width, and the sweep fit."""

    config: Config
    runs: tuple[WidthResult, ...]
    sweep: dict = field(default_factory=dict)
    out: Path | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(r.width for r in self.runs)

    def run(self, width: int) -> WidthResult:
        for r in self.runs:
            if r.width == width:
                return r
        raise ValueError(f"width: {width} was not validated (widths: {self.widths})")

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "metric": agreement.DEFINITION,
            "runs": {str(r.width): {"agreement": r.agreement, "headline": r.headline(),
                                    "headline_at_horizon": r.headline("mean_at_horizon"),
                                    "timings": r.timings,
                                    "status": {"observed": r.observed.status,
                                               "observed_diverged_at": r.observed.diverged_at,
                                               "linearised": None if r.linearised is None
                                               else r.linearised.status,
                                               **{f"predicted_{k}": p.status
                                                  for k, p in r.predicted.items()}}}
                     for r in self.runs},
            "sweep": self.sweep,
            "config": self.config.to_dict(),
        }

    def summary(self) -> str:
        """Headline errors per width (and the fitted slopes)."""
        lines = [_describe_run(self.config), f"predictions: {TRAINED_NETWORK_WORDS}"]
        for r in self.runs:
            lines.append(f"width {r.width}: " + agreement.status_line("nonlinear", r.observed)
                         + (", " + agreement.status_line("linearised", r.linearised)
                            if r.linearised is not None else ""))
            horizon = r.headline("mean_at_horizon")
            for k, errs in r.headline().items():
                last = r.agreement[f"nonlinear vs {k}"]["last_step_compared"]
                if last is None:
                    upto = " (nothing compared)"
                elif last < float(self.config.steps[-1]):
                    upto = f" (compared up to step {last:g} only)"
                else:
                    upto = ""
                lines.append(f"  vs {k} NTK: " + ", ".join(
                    f"{m} within {_pct(e)} (at the horizon {_pct(horizon[k][m])})"
                    for m, e in errs.items() if e is not None) + upto)
        if self.runs:
            lines.append("(network mean; max_t |pred - obs| / |obs| over the records, and at "
                         "the last one)")
        if self.config.training.loss != "mse" and self.runs and self.runs[0].predicted:
            verdict = next(iter(self.runs[0].predicted.values())).metadata.get("stability", {})
            lines.append(verdict.get("words", ""))
        for key, fit in self.sweep.get("slopes", {}).items():
            used = self.sweep.get("fitted_widths", {}).get(key, self.widths)
            out = self.sweep.get("left_out", {}).get(key, {})
            lines.append(f"slope of {key} against width: {fit:.3f} (theory about -0.5; "
                         f"fitted over widths {', '.join(map(str, used)) or 'none'}"
                         + ("; fewer than two: no slope" if len(used) < 2 else "") + ")")
            for w, why in out.items():
                lines.append(f"  left out: width {w}: {why}")
        return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.3g}%"


def _describe_run(cfg: Config, options: bool = True) -> str:
    t, v = cfg.training, cfg.validation
    extra = []
    if t.batch_size:
        extra.append(f"mini-batch SGD, batch {t.batch_size} (sequence 0 of seed {cfg.seed}: "
                     "the same batches in training and prediction)")
    if v.independent_init:
        extra.append("independent initialisations (outside the theory)")
    from ntkdyn.validation.overlay import algorithm_title

    label = algorithm_title(algorithm_of(cfg))
    topo = cfg.topology
    if topo.sequence:
        where = "+".join(topo.sequence) + " (periodic)"
    elif topo.gossip:
        p = f", p={topo.gossip_p:g}" if topo.gossip == "edges" else ""
        where = f"{topo.name}, random gossip ({topo.gossip}{p}, sequence 0)"
    else:
        where = topo.name
    return (f"{label} on {where} ({cfg.partition.agents} agents, "
            f"{cfg.partition.scheme}), lr={t.lr:g}, {t.steps} steps, depth "
            f"{cfg.architecture.depth}, {v.dtype}"
            + (f", cross-entropy (logit scale {t.logit_scale:g})"
               if t.loss == "cross_entropy" else "")
            + ("; " + "; ".join(extra) if extra and options else ""))


def _as_config(config_or_path) -> Config:
    if isinstance(config_or_path, Config):
        return config_or_path
    if isinstance(config_or_path, str | Path):
        return load_config(config_or_path)
    raise ValueError("config: expected a path to a TOML file or an ntkdyn.config.Config, got "
                     f"{type(config_or_path).__name__}")


def kernels_arg(kernels) -> tuple[str, ...]:
    """``kernels`` as a tuple of :data:`KERNEL_CHOICES`: a sequence, ``"a,b"``, or
    ``"both"`` (every choice, the default of ``ntkdyn validate --kernels``)."""
    if isinstance(kernels, str) and kernels.strip() == "both":
        return KERNEL_CHOICES
    if isinstance(kernels, str):
        kernels = [k for k in kernels.split(",") if k.strip()]
    kernels = tuple(k.strip() for k in kernels)
    bad = [k for k in kernels if k not in KERNEL_CHOICES]
    if not kernels or bad:
        raise ValueError(f"kernels: expected a non-empty subset of {KERNEL_CHOICES}, got "
                         f"{kernels!r}")
    return kernels


def widths_arg(widths, cfg: Config) -> tuple[int, ...]:
    """``widths`` as sorted distinct positive ints: a sequence, ``"a,b"``, or ``None`` (the
    config's ``[validation] widths``, else ``architecture.width``); ``ValueError`` naming
    ``widths`` otherwise (the command line names ``--widths``)."""
    if widths is None:
        widths = cfg.validation.widths or [cfg.architecture.width]
    if isinstance(widths, str):
        try:
            widths = [int(w) for w in widths.split(",") if w.strip()]
        except ValueError:
            raise ValueError(f"widths: expected comma-separated integers, got {widths!r}") \
                from None
    widths = tuple(int(w) for w in widths)
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"widths: expected positive integers, got {widths!r}")
    if len(set(widths)) < len(widths):  # a repeated width would train the same networks
        raise ValueError(f"widths: expected distinct widths, got {widths!r}")
    return tuple(sorted(widths))


def validate(
    config_or_path: Config | str | Path,
    *,
    out: str | Path | None = None,
    widths: Sequence[int] | str | None = None,
    kernels: Sequence[str] | str = KERNEL_CHOICES,
    resume: bool = False,
    progress: bool = False,
    linearised: bool = True,
) -> ValidationResult:
    """Train real networks peer to peer and compare them with the predictions.

    Parameters
    ----------
    config_or_path : Config or path of a TOML file (see ``examples/default.toml``)
    out : folder for the outputs (none written when ``None``)
    widths : widths to validate (default ``[validation] widths`` or ``architecture.width``);
        an int list or a string ``"256,512"``
    kernels : "analytic", "empirical" or both (default both), a list or ``"a,b"``
    resume : continue from the checkpoints in ``out/checkpoints`` (else start afresh)
    progress : tqdm progress bars
    linearised : also train the linearised network (default)

    Returns
    -------
    ValidationResult
    """
    cfg = _as_config(config_or_path)
    kernels = kernels_arg(kernels)
    widths = widths_arg(widths, cfg)
    exp = from_config(cfg)
    _ensure_fits(exp, widths, kernels)  # before any training (issue 12, item 5)
    out = None if out is None else Path(out)
    ck_dir = None if out is None else out / "checkpoints"
    if ck_dir is not None and not resume and ck_dir.exists():
        shutil.rmtree(ck_dir)
    runs = []
    for width in widths:
        run = _validate_width(cfg, exp, width, kernels, ck_dir, progress, linearised)
        runs.append(run)
        if out is not None and len(widths) > 1:
            _write_width(out / f"width_{width}", cfg, run)
    sweep = _sweep(runs, kernels) if len(widths) > 1 else {}
    result = ValidationResult(cfg, tuple(runs), sweep, out)
    if out is not None:
        _write_all(out, result)
        if ck_dir is not None and ck_dir.exists():
            shutil.rmtree(ck_dir)
    return result


def _ensure_fits(exp, widths, kernels) -> None:
    """Refuse (``ProblemTooLargeError``, with what would fit) before training when the
    widest network's parameters or a prediction of the run would not fit in memory (the
    largest width's estimates; else the narrower widths trained first and the widest was
    refused only when drawn)."""
    from ntkdyn.prediction import ensure_prediction_fits

    ds = exp.parts.dataset
    n, k = ds.y_train.shape
    for width in sorted(widths, reverse=True)[:1]:
        arch = build_arch(exp.config, k, width)
        ensure_params_fit(arch, ds.dim)
        for kernel in kernels:
            full = kernel == "empirical" and (n * k) ** 2 * 8 <= FULL_KERNEL_MAX_BYTES
            ensure_prediction_fits(arch, n, ds.num_test, ds.dim, k, exp.parts.num_agents,
                                   what=f"validate's {kernel}-kernel prediction (width {width})",
                                   kernel=kernel, traced=not full, f0_network=True)


def _validate_width(cfg, exp, width, kernels, ck_dir, progress, linearised) -> WidthResult:
    v, t = cfg.validation, cfg.training
    arch = build_arch(cfg, exp.parts.dataset.num_classes, width)
    dim = exp.parts.dataset.dim
    # one initialisation for everything: drawn as the prediction draws it, rounded to the
    # training dtype, and handed back in float64 to the kernels (the same network)
    dtype = np.float32 if v.dtype == "float32" else np.float64
    params = jax.tree.map(lambda a: np.asarray(a, dtype).astype(np.float64),
                          init_params(arch, dim, cfg.seed))
    steps = cfg.steps
    common = dict(params0=params, seed=cfg.seed, dtype=v.dtype,
                  independent_init=v.independent_init, progress=progress, **exp.loss,
                  **exp.minibatch)
    timings = {}
    algo = exp.algorithm
    # random gossip / mini-batch SGD: training runs sampled sequence 0 (seed cfg.seed); the
    # prediction of that same sequence (samples=1) is what it is compared with
    samples = 1 if exp.samples else None

    def run_training(model):
        ck = None if ck_dir is None else ck_dir / f"{model}_w{width}.npz"
        tic = time.perf_counter()
        traj = train(arch, exp.parts, exp.mixing, t.lr, algo, steps, model=model,
                     checkpoint=ck, checkpoint_interval=CHECKPOINT_INTERVAL_S, **common)
        timings[f"train_{model}_s"] = time.perf_counter() - tic
        timings[f"train_{model}_steps_per_s"] = traj.metadata["training"]["steps_per_second"]
        return traj

    observed = run_training("nonlinear")
    lin = run_training("linearised") if linearised else None
    predicted = {}
    for kernel in kernels:
        pred, verdict, full = _predicted(cfg, exp, arch, params, kernel, width, samples,
                                         progress, timings)
        pred = _with_verdict(pred, verdict)
        if full and lin is not None:  # the full kernel's dynamics are the linearised network's
            lin = _with_verdict(lin, verdict, "(from the full empirical kernel, whose "
                                "dynamics are exactly the linearised network's)")
        predicted[kernel] = agreement.with_growth_status(pred)
    observed = agreement.with_growth_status(observed)
    if lin is not None:
        lin = agreement.with_growth_status(lin)
    comps = {}
    for kernel, pred in predicted.items():
        comps[f"nonlinear vs {kernel}"] = agreement.compare(pred, observed)
        if lin is not None:
            comps[f"linearised vs {kernel}"] = agreement.compare(pred, lin)
    return WidthResult(width, observed, lin, predicted, comps, timings)


#: which network validate's predictions describe (``metadata["quantity"]``, the summary)
TRAINED_NETWORK_WORDS = ("the network trained here: its own f0 (outputs at theta_0, drawn "
                         "with seed) and kernel, linearised dynamics; a given network, not an "
                         "average over initialisations")


def _predicted(cfg, exp, arch, params, kernel: str, width: int, samples, progress: bool,
               timings: dict):
    """The prediction from the trained network's own ``theta_0`` (``f0`` its outputs) with
    ``kernel`` (the full empirical kernel where it fits), and its stability verdict;
    returns ``(trajectory, verdict, full)`` and adds the times to ``timings``."""
    t = cfg.training
    n, k = exp.parts.dataset.y_train.shape
    full = kernel == "empirical" and (n * k) ** 2 * 8 <= FULL_KERNEL_MAX_BYTES
    tic = time.perf_counter()
    problem = build_problem(arch, exp.parts, exp.mixing, kernel=kernel, seed=cfg.seed,
                            params=params, f0="network", traced=not full, **exp.loss)
    meta = {"kernel": kernel, "seed": cfg.seed, "architecture": _describe(arch),
            "data": exp.parts.dataset.name, "partition": exp.parts.scheme,
            "kernel_layout": "full" if full else "traced", "width": width,
            "f0": "network", "quantity": TRAINED_NETWORK_WORDS}
    pred = run_problem(problem, exp.algorithm, [t.lr], cfg.steps, progress=progress,
                       metadata=meta, check_stability=False, samples=samples,
                       seed=cfg.seed, **exp.minibatch)[0]
    timings[f"predict_{kernel}_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    verdict = stability_verdict(problem, exp.algorithm, t.lr)
    timings[f"stability_{kernel}_s"] = time.perf_counter() - tic
    return pred, verdict, full


def stability_verdict(problem, algo, lr: float) -> dict:
    """Whether the linearised dynamics of ``problem`` are stable at rate ``lr``, at a cost
    that scales to full kernels.

    * ``lr`` below the sufficient bound (:func:`ntkdyn.dynamics.stability.sufficient_bound`):
      stable, proven, nothing else computed;
    * an operator of at most ``spectrum.DENSE_MAX`` dimensions: the exact report
      (:func:`ntkdyn.dynamics.stability.stability`: ``lr*`` and the spectral radius);
    * larger, a schedule with a ``-1`` crossing (DGD, GD, gradient tracking, DIGing, EXTRA,
      momentum on DGD; ATC, CTA, NEXT with ``W >= 0``) on a symmetric static ``W``: the exact
      ``lr*`` (:func:`ntkdyn.dynamics.stability.max_stable_lr`: the ``-1`` crossing, one extreme
      eigenvalue by ARPACK);
    * larger, any other schedule: the spectral radius at ``lr`` by ARPACK
      (:func:`ntkdyn.dynamics.stability.spectral_radius`, one extreme-eigenvalue computation, no
      root search for ``lr*``) up to ``ARPACK_MAX_DIM`` dimensions; beyond, not
      computed (``stable: None``; the status then comes from the trajectory, see
      :func:`ntkdyn.validation.agreement.growth`).

    With ``problem.loss == "cross_entropy"`` the dynamics are not affine and none of the
    above is exact: ``stable: None``, the status comes from the trajectory only, and the
    words state the sufficient bound from the largest softmax curvature
    (:func:`ntkdyn.dynamics.run.cross_entropy_bound`).

    Returns ``{"stable" (True, False, or None when the eigensolver failed or the loss is
    cross-entropy), "spectral_radius", "lr", "lr_star", "lr_bound", "method", "words"}``.
    """
    from ntkdyn.algorithms import get_algorithm

    algo = get_algorithm(algo)
    if problem.loss != "mse":
        from ntkdyn.dynamics.run import cross_entropy_bound

        bound = float(spectrum.sufficient_bound(problem, algo)) * 2.0 / problem.logit_scale**2
        return {"lr": float(lr), "lr_bound": bound, "spectral_radius": None, "lr_star": None,
                "stable": None, "method": "not computed (cross-entropy: not affine)",
                "words": "stability from the trajectory only: "
                         + cross_entropy_bound(problem, algo)}
    bound = float(spectrum.sufficient_bound(problem, algo))
    base = {"lr": float(lr), "lr_bound": bound, "spectral_radius": None, "lr_star": None}
    if np.isfinite(bound) and lr < bound:
        return {**base, "stable": True, "method": "sufficient bound",
                "words": f"stable: lr={lr:g} is below the sufficient bound {bound:.4g}"}
    dim = spectrum.StepOperator(problem, algo).dim
    if dim > spectrum.DENSE_MAX and spectrum.crossing_is_theorem(problem, algo):
        # a -1 crossing that is a theorem here (symmetric W, one rate): lr* is one extreme
        # eigenvalue by ARPACK (spectrum.max_stable_lr)
        lr_star, how = spectrum.max_stable_lr(problem, algo)
        stable = bool(lr < lr_star)
        return {**base, "stable": stable, "lr_star": float(lr_star),
                "method": f"{how}, ARPACK on {dim} dimensions",
                "words": f"linearised dynamics {'converge' if stable else 'diverge'} at "
                         f"lr={lr:g}: exact largest stable rate lr*={lr_star:.4g} "
                         f"({how}; margin {1 - lr / lr_star:+.1%})"}
    if dim <= spectrum.DENSE_MAX:
        rep = spectrum.stability(problem, algo, lr)
        return {**base, "stable": bool(rep.stable), "spectral_radius": rep.spectral_radius,
                "lr_star": rep.lr_star, "method": f"exact ({rep.method})",
                "words": rep.describe()}
    if dim > ARPACK_MAX_DIM:
        return {**base, "stable": None, "method": "not computed",
                "words": f"stability not computed: no closed-form bound or -1 crossing for "
                         f"this schedule and the operator has {dim} dimensions (> "
                         f"{ARPACK_MAX_DIM}: one ARPACK spectral radius took over 6 minutes "
                         "at 25,600); the status comes from the trajectory only; "
                         "ntkdyn.stability(problem, algorithm, lr) computes it"}
    try:
        rho = float(spectrum.spectral_radius(problem, algo, lr))
    except RuntimeError as exc:  # ARPACK did not converge: say so, do not guess
        return {**base, "stable": None, "method": "arpack (failed)",
                "words": f"stability not decided: {exc}"}
    stable = rho <= 1 + spectrum.RHO_TOL
    return {**base, "stable": stable, "spectral_radius": rho,
            "method": f"spectral radius at lr by ARPACK ({dim} dimensions; lr* not computed)",
            "words": f"linearised dynamics {'converge' if stable else 'diverge'} at lr={lr:g} "
                     f"(spectral radius {rho:.6f}, ARPACK on {dim} dimensions; lr* not "
                     "computed: ntkdyn.stability gives it)"}


def _with_verdict(traj: Trajectory, verdict: dict, source: str = "") -> Trajectory:
    """``traj`` with the stability verdict in its metadata, and ``status = "unstable"``
    when the dynamics diverge and it has not blown up (yet)."""
    meta = dict(traj.metadata, stability=dict(verdict, source=source) if source else verdict)
    status = traj.status
    if verdict["stable"] is False:
        meta["divergence"] = verdict["words"] + (f" {source}" if source else "")
        if not traj.diverged:
            status = "unstable"
    return dataclasses.replace(traj, status=status, metadata=meta)


def _sweep(runs: list[WidthResult], kernels) -> dict:
    """Headline errors against width and their fitted slopes.

    ``errors``: the pointwise relative error (max over the records) of the network mean,
    ``errors_at_horizon``: the same at the last common record; ``slopes`` are fitted to
    ``errors``.
    """
    widths = [r.width for r in runs]
    errors, horizon, slopes, fitted, left_out = {}, {}, {}, {}, {}
    for kernel in kernels:
        # a slope means something only over runs where both sides are ok (no blow-up,
        # stable linearised dynamics); the others are listed with the reason
        why = {r.width: _not_ok(r, kernel) for r in runs}
        use = [r.width for r in runs if not why[r.width]]
        for m in agreement.HEADLINE:
            key = f"{m} vs {kernel}"
            errs = [r.headline()[kernel][m] for r in runs]
            errors[key] = [float("nan") if e is None else e for e in errs]
            errs = [r.headline("mean_at_horizon")[kernel][m] for r in runs]
            horizon[key] = [float("nan") if e is None else e for e in errs]
            keep = [w in use for w in widths]
            slopes[key] = agreement.fit_slope(np.asarray(widths)[keep],
                                              np.asarray(errors[key])[keep])[0]
            fitted[key] = use
            left_out[key] = {str(w): why[w] for w in widths if why[w]}
    return {"widths": widths, "metric": agreement.DEFINITION, "errors": errors,
            "errors_at_horizon": horizon, "slopes": slopes, "fitted_widths": fitted,
            "left_out": left_out}


def _not_ok(run: WidthResult, kernel: str) -> str:
    """Why ``run`` is left out of the slope against ``kernel`` ('' when it is not)."""
    why = [agreement.status_line(name, traj) for name, traj in
           (("nonlinear network", run.observed),
            (f"prediction ({kernel} NTK)", run.predicted[kernel])) if traj.status != "ok"]
    return "; ".join(why)


# --------------------------------------------------------------------------- output
def _write_width(folder: Path, cfg: Config, run: WidthResult, extra: dict | None = None) -> None:
    from ntkdyn._utils.io import staged_output
    from ntkdyn.validation.overlay import overlay_figure

    for pattern in _OUTPUT_PATTERNS:  # outputs of an earlier run into the same folder
        for stale in folder.glob(pattern):
            stale.unlink()
    with staged_output(folder) as tmp:
        cfg_dict = cfg.to_dict()
        _with_config(run.observed, cfg_dict).save(tmp / "observed.npz")
        if run.linearised is not None:
            _with_config(run.linearised, cfg_dict).save(tmp / "linearised.npz")
        for k, pred in run.predicted.items():
            _with_config(pred, cfg_dict).save(tmp / f"predicted_{k}.npz")
        header = [_describe_run(cfg), f"predictions: {TRAINED_NETWORK_WORDS}",
                  f"width {run.width}", agreement.status_line("nonlinear network", run.observed)]
        if run.linearised is not None:
            header.append(agreement.status_line("linearised network", run.linearised))
        header += [agreement.status_line(f"prediction ({k} NTK)", p)
                   for k, p in run.predicted.items()]
        if cfg.training.loss != "mse":
            verdict = next(iter(run.predicted.values())).metadata.get("stability", {})
            header.append(f"stability ({cfg.training.loss}): " + verdict.get("words", ""))
        header.append("error: " + agreement.DEFINITION)
        (tmp / "agreement.txt").write_text(agreement.report_text(run.agreement, header))
        (tmp / "agreement.json").write_text(json_text(
            {"width": run.width, "metric": agreement.DEFINITION, "agreement": run.agreement,
             "headline": run.headline(), "headline_at_horizon": run.headline("mean_at_horizon"),
             "timings": run.timings, "status_lines": header[2:-1], **(extra or {})}))
        base = _describe_run(cfg, options=False) + f", width {run.width}"  # options: notes
        for k, pred in run.predicted.items():
            overlay_figure(pred, run.observed, tmp / f"overlay_{k}",
                           f"{base}: {k} NTK prediction vs nonlinear network",
                           predicted_label=f"{k} NTK prediction",
                           observed_label="nonlinear network")
        if run.linearised is not None:
            k = "empirical" if "empirical" in run.predicted else next(iter(run.predicted))
            overlay_figure(run.predicted[k], run.linearised, tmp / "overlay_linearised",
                           f"{base}: {k} NTK prediction vs linearised network",
                           predicted_label=f"{k} NTK prediction",
                           observed_label="linearised network")


def _write_all(out: Path, result: ValidationResult) -> None:
    from ntkdyn._utils.io import staged_output
    from ntkdyn.validation.overlay import width_sweep_figure

    if len(result.runs) == 1:
        _write_width(out, result.config, result.runs[0], extra=result.to_dict())
        return
    with staged_output(out) as tmp:
        (tmp / "agreement.json").write_text(json_text(result.to_dict()))
        lines = [result.summary(), ""]
        for r in result.runs:
            lines.append(f"--- width {r.width} (details in width_{r.width}/agreement.txt)")
            lines.append(agreement.report_text(r.agreement))
        (tmp / "agreement.txt").write_text("\n".join(lines))
        width_sweep_figure(result.sweep, tmp / "width_sweep", _describe_run(result.config))


def _with_config(traj: Trajectory, cfg_dict: dict) -> Trajectory:
    return dataclasses.replace(traj, metadata=dict(traj.metadata, config=cfg_dict))


__all__ = ["validate", "ValidationResult", "WidthResult", "KERNEL_CHOICES", "kernels_arg",
           "widths_arg"]
