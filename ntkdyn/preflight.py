"""Sanity-check hyperparameters before deployment, naming the regime of each statement.

The stability theory and the predictions are exact for the *linearised*
network (the NTK or "lazy" regime).  Below the exact largest stable rate
``lr*`` of the linearised dynamics the predictions apply (their agreement with
real networks shrinks like ``width^{-1/2}``); above it the linearised dynamics
diverge and the report withholds predictions: it never claims that the *real*
network diverges, which wide networks often do not (they shrink their kernel
and "catapult", Lewkowycz et al. 2020), unless ``measure_edge`` trained the
real network and observed it.

``check`` returns a :class:`CheckReport` (``.text()``, ``.to_json()``; the
JSON schema is ``ntkdyn/schemas/check.schema.json``).  On the exact path all
learning rates of the sweep share every pass over the kernel (one batched
prediction); on the low-rank path (``[prediction] rank``) every rate runs on the
one factor, in one pass with the rates as column groups (a static ``W``; with
cross-entropy also a periodic sequence), else one run per rate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ntkdyn import algorithms, graphs
from ntkdyn._utils.checks import learning_rates
from ntkdyn._utils.io import json_text
from ntkdyn.algorithms import Algorithm
from ntkdyn.config.experiment import FULL_CHECK_MAX_DIM as _FULL_DIM
from ntkdyn.config.experiment import Experiment, from_config
from ntkdyn.config.schema import Config, ConfigError, load_config
from ntkdyn.dynamics import stability as spectrum
from ntkdyn.dynamics.run import run_problem, versions
from ntkdyn.dynamics.steady_state import fixed_point
from ntkdyn.graphs import sequences as gossip
from ntkdyn.models import init_params
from ntkdyn.prediction import (
    build_problem,
    build_problem_and_nngp,
    init_draws,
    lowrank_nngp_source,
    lowrank_source,
    resolve_f0,
)
from ntkdyn.trajectory import (
    GossipTrajectory,
    last_mc_error,
    low_rank_lines,
    shared_draw_columns,
    zero_run_name,
)

#: the schedules every report compares at the configured rate (the configured one is added)
COMPARED: tuple[Algorithm, ...] = (algorithms.DGD, algorithms.ATC, algorithms.CTA)
SAFETY = 0.9  # recommended rates stay below SAFETY * lr*
SWEEP_FRACTIONS = np.linspace(0.1, 0.95, 10)
#: Kernel dtype of the check's batched prediction (sweep and chosen rate); the state and
#: the records stay float64.  ``"float64"`` reproduces ``ntkdyn predict`` to round-off.
SWEEP_DTYPE = "float32"
#: Random gossip: sampled mixing sequences per rate of the sweep and of the topology
#: comparison (at most; the configured count when smaller), the same sequences for every
#: rate (sequence ``s`` of the prediction), each row with its Monte-Carlo standard error.
#: The chosen rate's prediction keeps the configured count.  A sampled sequence costs a
#: column group of every kernel product: with 64 the default configuration's sweep took
#: 18.6 min of a 24.2 min check (README, "Sanity check before deploying", Random gossip).
SWEEP_SEQUENCES = 8
#: Measured agreement between predicted and observed test loss: the *pointwise* relative
#: error ``max_t |pred_t - obs_t| / |obs_t|`` of the network mean, largest over the 15
#: configurations of ``validate/run_suite.py`` (README "Measured agreement", digits,
#: 160 train / 160 test, 8 agents, 200 steps): kernel -> width -> error.
MEASURED_AGREEMENT = {"analytic": {64: 0.58, 256: 0.15, 1024: 0.033},
                      "empirical": {64: 0.105, 256: 0.049, 1024: 0.016}}
#: ``kernel = "empirical"``: the verdict, sweep and prediction use the full empirical kernel
#: where :attr:`~ntkdyn.config.experiment.Experiment.full_empirical_kernel` says so (the
#: same layout as ``ntkdyn predict``); otherwise the traced one, and the report says so.
FULL_CHECK_MAX_DIM = _FULL_DIM
#: Measured on the issue-12 configuration (width 64): the traced kernel's lr* exceeded the
#: full kernel's by this factor (0.463 vs 0.337).
TRACED_OVER_FULL_MEASURED = 0.463 / 0.337


@dataclass(frozen=True)
class AlgorithmVerdict:
    algorithm: str
    lr: float
    spectral_radius: float
    lr_star: float
    lr_bound: float
    margin: float
    inside: bool
    method: str
    verdict: str
    operator: str = "one step"
    stable_rates: tuple = ()
    stable_set: str = ""
    #: cross-entropy: what the verdict is exact for (the linearisation at f_0), else ""
    note: str = ""


@dataclass(frozen=True)
class CheckReport:
    """Everything ``ntkdyn check`` says, as data."""

    config: dict
    kernel: str
    width: int
    topology: str
    algorithm: str
    lr: float
    target_loss: float
    horizon: int
    stability: list[AlgorithmVerdict]
    inside: bool
    prediction: dict | None
    sweep: list[dict]
    recommended: dict | None
    topologies: list[dict] = field(default_factory=list)
    edge: dict | None = None
    caveat: str = ""
    timings: dict = field(default_factory=dict)
    kernel_layout: str = "traced"
    versions: dict = field(default_factory=dict)
    #: ``[prediction] rank``: the factor's facts; the verdicts are of the truncated operator
    low_rank: dict | None = None
    #: ``[prediction] width`` / ``width_tol``: the finite-width band at the horizon and the
    #: width within the tolerance (:func:`finite_width_report`); ``None`` when neither is set
    finite_width: dict | None = None
    #: ``training.loss`` ("mse" or "cross_entropy": verdicts of the linearisation at f_0)
    loss: str = "mse"
    #: ``training.batch_size > 0``: what the report's statements are of (the expected,
    #: full-batch dynamics) and the chosen rate's band over mini-batch sequences; else None
    minibatch: dict | None = None
    #: the network whose ``prediction["final_*"]`` fields, ``steps_to_target`` and sweep
    #: these are (:func:`_network_name`: the mean network, the network from ``f0 = 0`` with
    #: cross-entropy, or the network initialised with the seed)
    network: str = "mean network (f0 = 0)"

    @property
    def target_of(self) -> str:
        """What :attr:`target_reached` is about: the headline quantity of the report, the
        expected test loss of one random network where it was predicted (the network a
        user trains from a random initialisation), else :attr:`network`."""
        if self.prediction and self.prediction.get("one_random_network") is not None:
            return "the expected test loss of one random network"
        return f"the test loss of the {self.network}"

    @property
    def target_reached(self) -> bool:
        """Whether :attr:`target_of` reaches ``target_loss`` within the horizon."""
        if not self.prediction:
            return False
        one = self.prediction.get("one_random_network")
        if one is not None:
            return one.get("steps_to_target_expected") is not None
        return self.prediction["steps_to_target"] is not None

    @property
    def trajectory_status(self) -> str:
        """The chosen rate's predicted trajectory's own status (``"ok"``, ``"unstable"``:
        e.g. sampled gossip sequences that grew while the mean state converges, or
        ``"diverged"``), the one random network's where it was predicted and is not ok;
        ``"ok"`` without a prediction (outside the regime: :attr:`inside` says it).  With
        mini-batch SGD the sampled batch sequences' status (:attr:`minibatch`) counts too:
        the full-batch dynamics can converge while the configured SGD run grows."""
        if not self.prediction:
            return "ok"
        for run in (self.prediction.get("one_random_network") or {}, self.minibatch or {}):
            if run.get("status", "ok") != "ok":
                return run["status"]
        return self.prediction.get("status", "ok")

    @property
    def exit_code(self) -> int:
        """0: inside the NTK regime, the predicted trajectory's own status ``"ok"``
        (:attr:`trajectory_status`) and target reached (by :attr:`target_of`); 1 otherwise."""
        ok = self.inside and self.trajectory_status == "ok"
        return 0 if ok and self.target_reached else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"exit_code": self.exit_code,
                                           "target_reached": self.target_reached,
                                           "target_of": self.target_of}

    def to_json(self) -> str:
        """Standard JSON (:func:`ntkdyn._utils.io.json_text`: no sufficient bound is
        ``null``, a margin with no stable rate ``"-inf"``)."""
        return json_text(self.to_dict())

    def text(self) -> str:
        return _render(self)


def stability_of(problem, algo, lr) -> spectrum.StabilityReport:
    """The stability report for ``problem``'s loss: the squared loss's exact one, or for
    cross-entropy that of the step linearised at ``f_0`` (:mod:`ntkdyn.dynamics.ce_stability`:
    exact for the linearisation, not a guarantee; ``lr_bound`` from the largest softmax
    curvature)."""
    if problem.loss == "cross_entropy":
        from ntkdyn.dynamics import ce_stability

        return ce_stability.stability(problem, algo, lr)
    return spectrum.stability(problem, algo, lr)


def _verdict(report: spectrum.StabilityReport, topology: str) -> str:
    a = report.algorithm.upper().replace("_", " ")
    if report.loss == "cross_entropy":
        a += " (cross-entropy, linearised at initialisation)"
    if report.stable:
        return (f"{a} at lr={report.lr:.4g} on this {topology} is inside the NTK regime: the "
                f"linearised dynamics converge (lr*={report.lr_star:.4g}, margin "
                f"{report.margin:.0%}); the predictions apply.")
    where = (f"above lr*={report.lr_star:.4g}" if len(report.stable_rates) == 1
             and report.stable_rates[0][0] == 0 else f"here ({report.stable_set})")
    return (f"{a} at lr={report.lr:.4g} on this {topology} is outside the NTK regime: the "
            f"linearised dynamics diverge {where}, so the predictions "
            "do not apply; real networks may still train (they can shrink their kernel and "
            "'catapult'): run `ntkdyn validate` or `ntkdyn check --measure-edge` to see.")


def _steps_to_target(traj, target: float) -> int | None:
    hit = np.flatnonzero(traj.network_mean("test_loss") <= target)
    return int(traj.steps[hit[0]]) if hit.size else None


def _summarise(traj, target: float) -> dict:
    """A sweep row: the final network-mean metrics and steps to ``target``; over sampled
    sequences (random gossip) also ``sequences`` and the final test loss and accuracy's
    Monte-Carlo standard errors (``None`` with one sequence)."""
    row = {
        "lr": float(np.max(traj.lr)),
        "status": traj.status,
        "final_train_loss": float(traj.network_mean("train_loss")[-1]),
        "final_test_loss": float(traj.network_mean("test_loss")[-1]),
        "final_train_acc": float(traj.network_mean("train_acc")[-1]),
        "final_test_acc": float(traj.network_mean("test_acc")[-1]),
        "final_consensus_dist": float(traj.network_mean("consensus_dist")[-1]),
        "steps_to_target": _steps_to_target(traj, target),
    }
    if isinstance(traj, GossipTrajectory):
        row.update(sequences=int(traj.samples),
                   final_test_loss_mc_error=last_mc_error(traj, "test_loss"),
                   final_test_acc_mc_error=last_mc_error(traj, "test_acc"))
    if "growing" in traj.metadata:  # status "unstable" from the sampled sequences themselves
        row["growing"] = traj.metadata["growing"]["words"]
    return row


def _network_name(f0: str, cfg: Config) -> str:
    """The network whose ``final_*`` fields and sweep the check reports, for ``f0``
    resolved (:func:`~ntkdyn.prediction.resolve_f0`): ``"network"``, the one initialised
    with the config's seed; otherwise the run from ``f0 = 0`` (the mean network for the
    squared loss, :func:`~ntkdyn.trajectory.zero_run_name`)."""
    if f0 == "network":
        return f"network initialised with seed {cfg.seed}"
    return zero_run_name(cfg.training.loss)


def _sweep_dtype(cfg: Config) -> str:
    """Kernel storage of check's sweep: ``[prediction] kernel_dtype``, default
    :data:`SWEEP_DTYPE`; ``"mixed"`` is float64 there (no sampled networks in the sweep)."""
    dtype = cfg.prediction.kernel_dtype or SWEEP_DTYPE
    return "float64" if dtype == "mixed" else dtype


def _random_network(problem, nngp, algo, exp: Experiment):
    """The chosen rate's prediction for one random network, as ``ntkdyn predict`` makes it
    from the same configuration (a :class:`~ntkdyn.trajectory.RandomNetworkTrajectory`):
    the same sampled initialisations (``prediction.samples``, else with random gossip or
    mini-batch SGD the sequences' count, network ``s`` on sequence ``s`` with the configured
    batches), float32 kernel products; ``None`` when ``f0`` is not ``"random"``."""
    if nngp is None:
        return None
    from ntkdyn.dynamics.random_init import independent_networks

    cfg, t = exp.config, exp.config.training
    init, samples = init_draws(problem, nngp, "random",
                               cfg.prediction.samples or exp.samples or None, cfg.seed,
                               t.batch_size)
    dtype = cfg.prediction.kernel_dtype or SWEEP_DTYPE
    if dtype == "mixed" and independent_networks(problem, t.batch_size):
        dtype = SWEEP_DTYPE
    # init_band=False: the report gives the joint band only (S fewer column groups with
    # random gossip or mini-batches and the squared loss; the same numbers)
    return run_problem(problem, algo, [t.lr], cfg.steps, check_stability=False,
                       reference=False, kernel_dtype=dtype, init=init, samples=samples,
                       seed=cfg.seed, init_band=False, **exp.minibatch)[0]


def _one_network_fields(traj, target: float) -> dict | None:
    """``one_random_network`` of the report from a
    :class:`~ntkdyn.trajectory.RandomNetworkTrajectory`: samples, status, steps to the
    target, and per metric the final expected value, 5-95 % band and Monte-Carlo standard
    error (``mc_error_is_bound``: a bound, the networks sharing draw columns); ``None``
    without a trajectory."""
    if traj is None:
        return None
    out = {"samples": traj.samples, "status": traj.status,
           **({"growing": traj.metadata["growing"]["words"]} if "growing" in traj.metadata
              else {}),
           "steps_to_target_expected": _steps_to_target(traj, target),
           "mc_error_is_bound": shared_draw_columns(traj.metadata) > 1}
    for metric in ("train_loss", "test_loss", "train_acc", "test_acc"):
        out[f"final_{metric}_expected"] = float(traj.network_mean(metric)[-1])
        out[f"final_{metric}_band"] = [float(b[-1].mean()) for b in traj.band(metric)]
        out[f"final_{metric}_mc_error"] = last_mc_error(traj, metric)
    return out


def _analyse(exp: Experiment, problem, cfg: Config) -> list[AlgorithmVerdict]:
    """Stability of the :data:`COMPARED` schedules at the chosen rate, once per spectrum."""
    return _shared_verdicts(lambda algo: stability_of(problem, algo, cfg.training.lr),
                            _topology_name(exp.config))


def _shared_verdicts(report_of, topology: str, chosen: Algorithm | None = None
                     ) -> list[AlgorithmVerdict]:
    """The verdicts of the :data:`COMPARED` schedules (and ``chosen`` if it is not one of
    them, appended last), ``report_of(algorithm)`` called once per spectrum
    (:attr:`~ntkdyn.algorithms.Algorithm.shares_spectrum_with`: CTA's is ATC's)."""
    out, cache = [], {}
    by_name = {a.name: a for a in COMPARED}
    for algo in COMPARED:
        key = algo.shares_spectrum_with if algo.shares_spectrum_with in by_name else algo.name
        if key not in cache:
            cache[key] = report_of(by_name[key])
        out.append(_as_verdict(dataclasses.replace(cache[key], algorithm=algo.name),
                               topology))
    if chosen is not None and all(a is not chosen for a in COMPARED):
        out.append(_as_verdict(report_of(chosen), topology))
    return out


def _chosen_verdict(verdicts: list[AlgorithmVerdict], algo: Algorithm) -> AlgorithmVerdict:
    """The verdict of ``algo`` among those of :func:`_shared_verdicts` (the last of that
    name: ``algo`` itself when it was appended as not one of the compared schedules)."""
    return [v for v in verdicts if v.algorithm == algo.name][-1]


def _as_verdict(rep: spectrum.StabilityReport, topology: str) -> AlgorithmVerdict:
    return AlgorithmVerdict(rep.algorithm, rep.lr, rep.spectral_radius, rep.lr_star,
                            rep.lr_bound, rep.margin, rep.stable, rep.method,
                            _verdict(rep, topology), rep.operator, rep.stable_rates,
                            rep.stable_set, rep.note)


def _topology_name(cfg: Config) -> str:
    t = cfg.topology
    if t.sequence:
        return "periodic sequence " + "+".join(t.sequence)
    if t.mixing_file:  # used as given: the topology name is not what was analysed
        return f"mixing matrix from {t.mixing_file}"
    name = f"graph from {t.adjacency_file}" if t.name == "file" else t.name
    return name + (f" with random gossip ({t.gossip})" if t.gossip else "")


def _in_stable_set(lr: float, stable_rates) -> bool:
    """``lr`` lies in an interval ``[lo, hi]`` of the stable set with ``SAFETY`` to spare:
    ``lo / SAFETY <= lr <= SAFETY * hi``."""
    return any(lo / SAFETY <= lr <= SAFETY * hi for lo, hi in stable_rates)


def _recommend(sweep: list[dict], stable_rates) -> dict | None:
    """The best rate of the sweep among those whose own verdict is stable (inside the stable
    set, ``SAFETY`` from its ends) and whose prediction is ``ok``; ``None`` when the stable
    set is empty."""
    safe = [s for s in sweep if _in_stable_set(s["lr"], stable_rates) and s["status"] == "ok"]
    if not safe:
        return None
    reached = [s for s in safe if s["steps_to_target"] is not None]
    if reached:
        best = min(reached, key=lambda s: (s["steps_to_target"], -s["lr"]))
        why = f"fastest to the target loss among rates <= {SAFETY:.0%} of lr*"
    else:
        best = min(safe, key=lambda s: s["final_test_loss"])
        why = (f"lowest predicted final test loss among rates <= {SAFETY:.0%} of lr* "
               "(none reaches the target)")
    return {"lr": best["lr"], "reason": why, "steps_to_target": best["steps_to_target"],
            "final_test_loss": best["final_test_loss"]}


def _outside_measured(cfg: Config | None) -> list[str]:
    """What in ``cfg`` lies outside the settings :data:`MEASURED_AGREEMENT` was measured on
    (squared loss, full batches, static mixing, the exact path)."""
    if cfg is None:
        return []
    t, topo = cfg.training, cfg.topology
    return [what for what, on in (("cross-entropy", t.loss == "cross_entropy"),
                                  ("mini-batch SGD", bool(t.batch_size)),
                                  ("time-varying mixing", bool(topo.gossip or topo.sequence)),
                                  ("the low-rank path", cfg.prediction.rank is not None))
            if on]


def _caveat(kernel: str, width: int, full: bool = False, cfg: Config | None = None) -> str:
    measured = MEASURED_AGREEMENT["analytic" if kernel == "analytic" else "empirical"]
    widths = np.array(sorted(measured))
    nearest = int(widths[np.argmin(np.abs(np.log(widths) - np.log(width)))])
    gap = measured[nearest]
    if kernel == "analytic":
        what = "the analytic (infinite-width) NTK: no forward pass over the data beyond the kernel"
    elif full:
        what = ("the empirical NTK of the network at its initialisation, full (N K) x (N K) "
                "kernel as `ntkdyn validate` uses (verdict, sweep and prediction)")
    else:
        what = ("the empirical NTK of the network at its initialisation in its traced form "
                "Theta (x) I_K (the full kernel is too large to check here): the traced "
                "kernel's lr* can exceed that of the full kernel, which the linearised network "
                f"follows (measured {TRACED_OVER_FULL_MEASURED:.2f}x at width 64), so a rate "
                "close to lr* may still diverge")
    outside = _outside_measured(cfg)
    return (f"Predictions use {what}. Measured agreement with real networks, on 15 "
            "configurations with the squared loss, full batches, static mixing and the exact "
            "path (validate/run_suite.py: digits, 160 train / 160 test, 8 agents, 200 steps; "
            "pointwise relative error of the test loss, max over time, "
            f"|pred_t - obs_t| / |obs_t|): at most {gap:.1%} at width {nearest} with this "
            f"kernel, shrinking like width^-1/2 or faster; measured values, not a bound "
            f"elsewhere; this configuration's width is {width}. "
            + (f"Not measured with {', '.join(outside)}: " if outside else "")
            + "run `ntkdyn validate` to measure it for this configuration.")


def _check_supported(cfg: Config, measure_edge: bool = False) -> None:
    """What check does not analyse (a configuration without test data: its target is a
    test loss; the gradient flow: its verdicts are of discrete steps; for cross-entropy or
    mini-batch SGD) is a :class:`ConfigError` naming the key."""
    t, p = cfg.training, cfg.prediction
    if cfg.data.n_test == 0:
        raise ConfigError("config: data.n_test: ntkdyn check needs test data (its target "
                          "and sweep are of the test loss); expected data.n_test > 0, got 0")
    if t.continuous:
        raise ConfigError("config: training.continuous: ntkdyn check analyses discrete steps "
                          "(whether the rate's steps converge, lr*, a sweep over rates), which "
                          "say nothing about the gradient flow (DGD's flow converges at every "
                          "rate); expected training.continuous = false to check the discrete "
                          "training the flow interpolates (ntkdyn predict runs the flow)")
    what = ("training.loss = 'cross_entropy'" if t.loss != "mse" else
            "training.batch_size > 0" if t.batch_size else None)
    if what is None:
        return
    # (rank = "auto" with cross-entropy is refused when the configuration is read)
    if p.rank is not None and t.batch_size:
        raise ConfigError(f"config: prediction.rank: the low-rank check is for the squared "
                          f"loss with full-batch gradients, got {what}; remove prediction.rank")
    if measure_edge:
        key = "training.loss" if t.loss != "mse" else "training.batch_size"
        raise ConfigError(f"config: {key}: --measure-edge trains the real network with the "
                          f"squared loss and full batches, got {what}; run without "
                          "--measure-edge (ntkdyn validate trains with the configured loss "
                          "and mini-batches)")


def _sweep_and_prediction(problem, nngp, exp: Experiment, cfg: Config,
                          chosen: AlgorithmVerdict, progress: bool):
    """The learning-rate sweep (fractions of ``lr*``) and, when the chosen rate is inside
    the NTK regime, its prediction, fixed point and random-network band.  The chosen
    rate's ``f_0 = 0`` run is the one random network's mean network where that ran the
    same full-batch dynamics (:func:`_full_batch_mean`), else a column group of the sweep's
    pass.  The sweep's pass records the training figures at the horizon only
    (``train_records="final"``; its rows and steps to the target read the test loss at
    every record, the rest at the horizon).  With random gossip the sweep runs
    :func:`_sweep_sequences` sequences per rate and the chosen rate all of them: its mean
    network is the one random network's ``f_0 = 0`` run over the same sequences where that
    ran (:func:`_same_sequences_mean`), else a second pass."""
    target = cfg.prediction.target_loss
    algo = exp.algorithm
    # fractions of lr*; none when no rate is stable (lr* = 0) or every rate is (lr* = inf)
    rates = ([float(f * chosen.lr_star) for f in SWEEP_FRACTIONS]
             if 0 < chosen.lr_star < np.inf else [])
    # One batched pass for the sweep (and the chosen rate), with float32 kernel products
    # (float64 state): within 1e-5 relative of float64 on the default configuration
    # (measured 8.4e-6 on the losses, accuracies identical), twice as fast (SWEEP_DTYPE).
    # mini-batch SGD: the sweep and the chosen rate's prediction are the full-batch
    # (expected) dynamics; the band over mini-batch sequences is _minibatch_band's.
    # Random gossip: the sweep runs SWEEP_SEQUENCES sequences, the chosen rate all the
    # configured ones, so the chosen rate is not in the sweep's pass (unless the counts
    # are equal).
    samples, sequences = _sweep_samples(exp, cfg), _sweep_sequences(exp, cfg)
    together = samples == sequences
    # the training figures at the horizon only (train_records="final"): no product of the
    # training kernel with every agent's state at the records before it
    run = dict(progress=progress, check_stability=False, reference=False,
               kernel_dtype=_sweep_dtype(cfg), train_records="final")
    one = _random_network(problem, nngp, algo, exp) if chosen.inside else None
    # the chosen rate's f_0 = 0 run is the one random network's mean network where that
    # ran the same full-batch dynamics: not again in the sweep's pass
    mean = _full_batch_mean(one, cfg)
    first = rates + [cfg.training.lr] * (together and chosen.inside and mean is None)
    trajs = run_problem(problem, algo, first, cfg.steps, samples=sequences,
                        **run) if first else []
    sweep = [_summarise(t, target) for t in trajs[: len(rates)]]
    prediction = None
    if chosen.inside:
        if mean is not None:
            trajs = [mean]
        elif not together:  # random gossip: the chosen rate over all sequences
            mean = _same_sequences_mean(one, samples, cfg)
            trajs = [mean] if mean is not None else run_problem(
                problem, algo, [cfg.training.lr], cfg.steps, samples=samples, **run)
        prediction = _summarise(trajs[-1], target)
        fp = None
        if problem.loss == "cross_entropy":
            from ntkdyn.dynamics.ce_stability import NO_FIXED_POINT

            prediction["steady_state_note"] = NO_FIXED_POINT
        else:
            try:
                fp = fixed_point(problem, algo, cfg.training.lr)
            except ValueError:  # a periodic sequence ends on a periodic orbit
                fp = None
        prediction.update(
            one_random_network=_one_network_fields(one, target),
            steady_state_consensus_gap=None if fp is None else fp.consensus_gap,
            steady_state_distance_to_centralised=None if fp is None else fp.central_gap,
            steady_state_test_loss=float(np.mean(fp.test_loss))
            if fp is not None and fp.test_loss is not None else None)
    return sweep, prediction


def _full_batch_mean(one, cfg: Config):
    """The ``f_0 = 0`` run of the one random network's pass ``one`` (its mean network, at
    the chosen rate, in the kernel storage of the sweep: ``float32`` products, or ``float64``
    for its first ``K`` columns with ``"mixed"``) where that is the full-batch dynamics on a
    static or periodic mixing, which the sweep's pass would otherwise run again as its
    last column group (measured on the periodic ring+star of 8 agents: one of its 11 groups,
    about 0.5 s); else ``None``."""
    mean = None if one is None else one.mean_network
    if (mean is None or isinstance(mean, GossipTrajectory) or cfg.training.batch_size
            or cfg.topology.gossip):
        return None
    return mean


def _same_sequences_mean(one, samples: int, cfg: Config):
    """The mean network over ``samples`` full-batch mixing sequences that the one random
    network's run ``one`` already made (with random gossip its networks run sequences
    ``0..S-1``, and so does its ``f_0 = 0`` run: ``one.mean_network``), else ``None``."""
    mean = None if one is None else one.mean_network
    if (cfg.training.batch_size or not isinstance(mean, GossipTrajectory)
            or mean.samples != samples):
        return None
    return mean


def _sweep_samples(exp: Experiment, cfg: Config) -> int | None:
    """Sampled sequences of the chosen rate's full-batch prediction: random gossip's (the
    sweep is full batch, so ``training.samples`` of mini-batch SGD is not its), else
    none."""
    if not cfg.training.batch_size:
        return exp.samples
    return cfg.topology.gossip_samples if cfg.topology.gossip else None


def _sequence_runs(exp: Experiment, cfg: Config, f0: str) -> list[dict] | None:
    """The runs :func:`check` makes one after the other with sampled sequences (random gossip
    or mini-batch SGD), as keywords of :func:`ntkdyn.prediction.prediction_estimate`, for the
    memory check before the kernels are built; ``None`` without sequences (one batched
    pass: the sweep's rates and the chosen one).  The sweep (full batch, the first
    :func:`_sweep_sequences` sequences), the chosen rate's mean network over all of them,
    its one random network and its mini-batch band each count their own column groups, not
    the product of the sweep's rates and the configured sequences."""
    t = cfg.training
    samples = _sweep_samples(exp, cfg)
    if samples is None and not t.batch_size:
        return None
    runs = [dict(rates=len(SWEEP_FRACTIONS) + 1, samples=_sweep_sequences(exp, cfg),
                 f0_random=False, batch_size=0),
            dict(rates=1, samples=samples, f0_random=False, batch_size=0)]
    if f0 == "random":
        runs.append(dict(rates=1, samples=cfg.prediction.samples or exp.samples or None,
                         f0_random=True, batch_size=t.batch_size))
    if t.batch_size:
        runs.append(dict(rates=1, samples=t.samples, f0_random=False, batch_size=t.batch_size))
    return runs


def _sweep_sequences(exp: Experiment, cfg: Config) -> int | None:
    """Sampled sequences per rate of the sweep and the topology comparison: at most
    :data:`SWEEP_SEQUENCES` of :func:`_sweep_samples` (the first ones, the same for every
    rate), else none."""
    samples = _sweep_samples(exp, cfg)
    return None if samples is None else min(samples, SWEEP_SEQUENCES)


#: What check's statements are of with mini-batch SGD, in words.
MINIBATCH_WORDS = ("stability, lr*, the sweep and the steady state are those of the "
                   "full-batch dynamics: for the squared loss these are exactly the expected "
                   "SGD dynamics of the linearised network (its gradient is affine, the "
                   "expected mini-batch gradient is the full one); for cross-entropy only "
                   "to first order")


def _minibatch_band(problem, exp: Experiment, cfg: Config, inside: bool) -> dict | None:
    """``training.batch_size > 0``: the chosen rate over ``training.samples`` sampled
    mini-batch sequences (one batched run, sequence ``s`` reproducible from ``seed``): the
    final network-mean metrics' mean and 5-95 % band, and the fraction of sequences that
    diverged; ``None`` for full batch.  Outside the regime only the words are given."""
    t = cfg.training
    if not t.batch_size:
        return None
    start = (f"the {zero_run_name(t.loss)}: the band is over batch sequences only, not over "
             "initialisations" if not np.any(problem.f0_train) else "the configured network's f0")
    out: dict = {"batch_size": int(t.batch_size), "samples": int(t.samples),
                 "batch_sampling": t.batch_sampling, "statement": MINIBATCH_WORDS,
                 "starts_from": start}
    if not inside:
        return out
    traj = run_problem(problem, exp.algorithm, [t.lr], cfg.steps, check_stability=False,
                       reference=False, kernel_dtype=_sweep_dtype(cfg), samples=t.samples,
                       batch_size=t.batch_size, batch_sampling=t.batch_sampling,
                       seed=cfg.seed)[0]
    out.update(status=traj.status,
               steps_to_target_mean=_steps_to_target(traj, cfg.prediction.target_loss))
    if "growing" in traj.metadata:
        out["growing"] = traj.metadata["growing"]["words"]
    for metric in ("train_loss", "test_loss", "train_acc", "test_acc"):
        out[f"final_{metric}_mean"] = float(traj.network_mean(metric)[-1])
        out[f"final_{metric}_band"] = [float(b[-1].mean()) for b in traj.band(metric)]
        out[f"final_{metric}_mc_error"] = last_mc_error(traj, metric)
    return out


def check(config: Config | str | Path, *, topologies: list[str] | None = None,
          measure_edge: bool = False, edge_steps: int = 300, edge_bisections: int = 4,
          cache_dir: str | Path | None = None, progress: bool = False) -> CheckReport:
    """Check a configuration's rate, topology and width before deployment.

    Parameters
    ----------
    config : Config or path to a TOML file
    topologies : list of topology names to compare (same size, mixing rule), optional
    measure_edge : bool
        Train the real network briefly (``edge_steps`` steps) at rates above ``lr*``
        (doubling, then ``edge_bisections`` bisections) to find where real training
        stops converging; results are cached in ``cache_dir``.
    edge_steps : int
        Training steps per edge trial (default 300).
    edge_bisections : int
        Bisections between the last converging and the first diverging rate (default 4).
    cache_dir : str or Path, optional
        Folder of the cached edge trials (``ntkdyn check``: ``.cache/ntkdyn-edge``).
    progress : bool
        Progress bars of the long steps.

    Returns
    -------
    CheckReport
        ``text()`` the report, ``to_json()`` the machine-readable one
        (``ntkdyn/schemas/check.schema.json``), ``exit_code`` 0 inside the regime with the
        target reached by :attr:`CheckReport.target_of`, else 1.
    """
    t0 = time.perf_counter()
    cfg = load_config(config) if not isinstance(config, Config) else config
    _check_supported(cfg, measure_edge)
    if cfg.prediction.rank is not None:
        if topologies or measure_edge:
            raise ConfigError("config: prediction.rank: --topologies and --measure-edge run on "
                              "the exact path; remove prediction.rank (and tol) for them")
        return _check_lowrank(cfg, t0)
    exp = from_config(cfg)
    _check_topologies(exp, topologies or [])
    full = exp.full_empirical_kernel  # the layout ntkdyn predict uses
    f0 = resolve_f0(cfg.prediction.f0 or None, cfg.prediction.kernel, mixing=exp.mixing)
    # f0 = "random": the sweep and verdicts use the mean network's problem (f0 = 0); the NNGP
    # comes from the same kernel pass, for the chosen rate's band over initialisations
    problem, nngp = build_problem_and_nngp(
        exp.arch, exp.parts, exp.mixing, kernel=cfg.prediction.kernel, seed=cfg.seed,
        params=None, f0=f0, traced=not full, rates=len(SWEEP_FRACTIONS) + 1,
        want_nngp=f0 == "random", loss=cfg.training.loss,
        logit_scale=exp.loss.get("logit_scale", 1.0), runs=_sequence_runs(exp, cfg, f0))
    t_kernel = time.perf_counter()
    verdicts = _analyse(exp, problem, cfg)
    algo = exp.algorithm
    chosen = next((v for a, v in zip(COMPARED, verdicts, strict=True) if a is algo), None)
    if chosen is None:  # gd, p2pl, gradient tracking, EXTRA, momentum: their own operator
        rep = stability_of(problem, algo, cfg.training.lr)
        chosen = _as_verdict(rep, _topology_name(cfg))
        verdicts.append(chosen)
    t_stab = time.perf_counter()
    target = cfg.prediction.target_loss
    sweep, prediction = _sweep_and_prediction(problem, nngp, exp, cfg, chosen, progress)
    finite = finite_width_report(exp, cfg, f0) if chosen.inside else None
    t_pred = time.perf_counter()
    comparison = [_topology_row(exp, name, cfg) for name in (topologies or [])]
    edge = None
    if measure_edge:
        from ntkdyn.validation.edge import measure_edge as _measure_edge

        edge = _measure_edge(exp, chosen.lr_star, steps=edge_steps, bisections=edge_bisections,
                             cache_dir=cache_dir, progress=progress)
    t_end = time.perf_counter()
    return CheckReport(
        config=cfg.to_dict(), kernel=cfg.prediction.kernel, width=cfg.architecture.width,
        topology=_topology_name(cfg), algorithm=cfg.training.algorithm, lr=cfg.training.lr,
        target_loss=target, horizon=int(cfg.training.steps), stability=verdicts,
        inside=chosen.inside, prediction=prediction, sweep=sweep,
        recommended=_recommend(sweep, chosen.stable_rates), topologies=comparison, edge=edge,
        caveat=_caveat(cfg.prediction.kernel, cfg.architecture.width, full, cfg),
        kernel_layout="full" if full or cfg.prediction.kernel == "analytic" else "traced",
        timings={"kernel_s": t_kernel - t0, "stability_s": t_stab - t_kernel,
                 "prediction_s": t_pred - t_stab, "topologies_and_edge_s": t_end - t_pred,
                 "total_s": t_end - t0},
        versions=versions(),
        finite_width=finite, loss=cfg.training.loss,
        minibatch=_minibatch_band(problem, exp, cfg, chosen.inside),
        network=_network_name(f0, cfg))


LOW_RANK_WORDS = ("the truncated operator's lr* is an upper bound on the full kernel's for "
                  "DGD/ATC/CTA with a symmetric or reversible W (theory/low_rank.md "
                  "section 6)")


def _lowrank_mixing(exp: Experiment):
    """The mixing of the low-rank check: the static matrix, or the process, whose
    stability is that of the exact path on the feature coordinates (one period of a
    periodic sequence; ``E[W]``, the mean state, for random gossip:
    :mod:`ntkdyn.lowrank.stability`) and whose sampled sequences run the prediction
    (:mod:`ntkdyn.lowrank.gossip`)."""
    if gossip.is_process(exp.mixing):
        return exp.mixing
    return gossip.resolve_mixing(exp.mixing)[0]


def _check_lowrank(cfg: Config, t0: float) -> CheckReport:
    """:func:`check` with ``[prediction] rank``: the factor of the low-rank path, the exact
    stability of the truncated operator on its coordinates
    (:func:`ntkdyn.lowrank.lowrank_stability`), the low-rank prediction at the chosen
    rate, the sweep of rates (:func:`_lowrank_sweep`, every rate on the same factor) and
    the recommended rate, and the steady state of the truncated dynamics
    (:func:`ntkdyn.lowrank.steady_state.lowrank_fixed_point`); no topology comparison or
    edge (exact-path features)."""
    from ntkdyn import lowrank

    exp = from_config(cfg)
    data, arch = exp.parts.dataset, exp.arch
    has_test = data.num_test > 0
    empirical = cfg.prediction.kernel == "empirical"
    # the network initialised with the seed: the empirical kernel's, or f0 = "network"'s
    # initial outputs with the analytic kernel
    network = resolve_f0(cfg.prediction.f0 or None, cfg.prediction.kernel,
                         low_rank=True) == "network"
    params = init_params(arch, data.dim, cfg.seed) if empirical or network else None
    source = lowrank_source(arch, cfg.prediction.kernel, params, data.x_train,
                            data.x_test if has_test else None)
    agent, lr = exp.parts.agent, cfg.training.lr
    mixing = _lowrank_mixing(exp)
    kw = exp.low_rank
    f0_train = np.asarray(arch.apply(params, data.x_train)) if params is not None else None
    factor, tol, algo, steps = lowrank.choose_factor(source, agent, mixing, lr, cfg.steps,
                                                     exp.algorithm, rank=kw["rank"],
                                                     tol=kw.get("tol"), seed=cfg.seed,
                                                     y_train=data.y_train,
                                                     f0_train=f0_train)
    t_kernel = time.perf_counter()
    if cfg.training.loss != "mse":
        return _check_lowrank_ce(cfg, exp, factor, params, steps, algo, (t0, t_kernel))
    name = _topology_name(cfg)
    problem = lowrank.FeatureProblem(factor, agent, mixing)  # Gram matrices once
    verdicts = _shared_verdicts(lambda a: lowrank.lowrank_stability(
        factor, agent, mixing, a, lr, problem=problem), name, algo)
    chosen = _chosen_verdict(verdicts, algo)
    t_stab = time.perf_counter()
    target = cfg.prediction.target_loss
    prediction = None
    low = dict(_lowrank_estimates(factor, exp, cfg, params, f0_train, float(steps[-1]), algo),
               tol=tol, verdicts="low-rank: " + LOW_RANK_WORDS)
    f0 = resolve_f0(cfg.prediction.f0 or None, cfg.prediction.kernel, low_rank=True)
    sweep = _lowrank_sweep(factor, exp, cfg, chosen, steps, algo,
                           _network_outputs(exp, params) if f0 == "network" else {})
    t_sweep = time.perf_counter()
    if chosen.inside:
        prediction = _lowrank_prediction(factor, exp, cfg, params, steps, algo)
    t_end = time.perf_counter()
    # the rank and estimates (at their cap: said, with a warning), as the prediction's summary
    estimates = low_rank_lines({"low_rank": low, "num_train": exp.parts.dataset.num_train})
    caveat = (". ".join(estimates) + ". Stability, sweep and prediction are those of the "
              f"truncated kernel; {LOW_RANK_WORDS}, so a rate inside it can still be outside "
              "for the full kernel. " + _caveat(cfg.prediction.kernel, cfg.architecture.width,
                                                cfg=cfg))
    return CheckReport(
        config=cfg.to_dict(), kernel=cfg.prediction.kernel, width=cfg.architecture.width,
        topology=name, algorithm=cfg.training.algorithm, lr=lr, target_loss=target,
        horizon=int(cfg.training.steps), stability=verdicts, inside=chosen.inside,
        prediction=prediction, sweep=sweep,
        recommended=_recommend(sweep, chosen.stable_rates), caveat=caveat,
        kernel_layout="full",
        timings={"kernel_s": t_kernel - t0, "stability_s": t_stab - t_kernel,
                 "prediction_s": t_end - t_stab, "sweep_s": t_sweep - t_stab,
                 "topologies_and_edge_s": 0.0, "total_s": t_end - t0},
        versions=versions(), low_rank=low, network=_network_name(f0, cfg))


def _lowrank_estimates(factor, exp: Experiment, cfg: Config, params, f0_train,
                       horizon: float, algo) -> dict:
    """The factor's facts and the a-priori error estimates of the training (and test)
    outputs at the configured rate (:func:`ntkdyn.lowrank.output_estimates`), from the
    residuals ``f_0 - Y`` of the network whose ``final_*`` fields the check reports."""
    from ntkdyn import lowrank

    data, agent, q = exp.parts.dataset, exp.parts.agent, exp.parts.num_agents
    residual = (0.0 if f0_train is None else f0_train) - np.asarray(data.y_train, dtype=float)
    test_residual = None
    if data.num_test > 0:
        f0_test = 0.0 if params is None else np.asarray(exp.arch.apply(params, data.x_test))
        test_residual = f0_test - np.asarray(data.y_test, dtype=float)
    return dict(factor.describe(), **lowrank.output_estimates(
        factor, residual, test_residual, agent, learning_rates(cfg.training.lr, q),
        np.bincount(agent, minlength=q), horizon, algo))


LOW_RANK_CE_WORDS = ("cross-entropy on the low-rank path: the verdicts are the exact path's "
                     "(the step linearised at f_0, the sufficient bound from the largest "
                     "softmax curvature) computed on the truncated operator Phi Phi^T; "
                     + LOW_RANK_WORDS)


def _check_lowrank_ce(cfg: Config, exp: Experiment, factor, params, steps, algo,
                      times: tuple[float, float]) -> CheckReport:
    """:func:`check` with ``[prediction] rank`` (an integer) and ``training.loss =
    "cross_entropy"``: what the exact cross-entropy check reports, on the factor's truncated
    operator ``Phi Phi^T``.  Verdicts: :func:`ntkdyn.lowrank.cross_entropy.
    lowrank_ce_stability` (the step linearised at ``f_0`` -- the mean network's ``f_0 = 0``
    for the analytic kernel, the network's own with the empirical one, as the exact check --
    and the sufficient bound from the largest softmax curvature ``s^2/2``); the sweep of
    rates (fractions of ``lr*``, :func:`_lowrank_sweep`: one run with the rates as column
    groups, each equal to its own :func:`~ntkdyn.lowrank.cross_entropy.predict_lowrank_ce`)
    and the chosen rate's prediction on the **same** factor; no fixed point
    (:data:`ntkdyn.dynamics.ce_stability.NO_FIXED_POINT`); no a-priori error estimate (it
    bounds the squared loss only).  A static ``W``, a periodic sequence or random gossip
    (verdicts with ``E[W]``, as the exact check; the sweep and prediction over
    ``topology.gossip_samples`` sequences, their means reported)."""
    from ntkdyn.dynamics.ce_stability import NO_FIXED_POINT
    from ntkdyn.lowrank.cross_entropy import NO_ESTIMATE, lowrank_ce_stability

    data, agent, lr = exp.parts.dataset, exp.parts.agent, cfg.training.lr
    w = _lowrank_mixing(exp)
    name, scale = _topology_name(cfg), exp.loss.get("logit_scale", 1.0)
    f0 = resolve_f0(cfg.prediction.f0 or None, cfg.prediction.kernel, low_rank=True)
    outputs = _network_outputs(exp, params) if f0 == "network" else {}
    kw = dict(num_outputs=data.y_train.shape[1], logit_scale=scale,
              f0_train=outputs.get("f0_train"))
    verdicts = _shared_verdicts(
        lambda a: lowrank_ce_stability(factor, agent, w, a, lr, **kw), name, algo)
    chosen = _chosen_verdict(verdicts, algo)
    t_stab = time.perf_counter()
    sweep = _lowrank_sweep(factor, exp, cfg, chosen, steps, algo, outputs)
    prediction = _lowrank_ce_prediction(factor, exp, cfg, chosen, steps, algo, outputs)
    if prediction is not None:
        prediction.update(steady_state_note=NO_FIXED_POINT, steady_state_consensus_gap=None,
                          steady_state_distance_to_centralised=None,
                          steady_state_test_loss=None,
                          one_random_network=_lowrank_ce_networks(factor, exp, cfg, steps,
                                                                  algo) if f0 == "random"
                          else None)
    t_end = time.perf_counter()
    low = dict(factor.describe(), error_estimate=None, error_estimate_kind="unavailable",
               error_estimate_reason=NO_ESTIMATE, tol=None, loss="cross_entropy",
               verdicts="low-rank: " + LOW_RANK_CE_WORDS)
    caveat = (f"Low-rank path (rank {factor.rank}, no a-priori error estimate with "
              f"cross-entropy: {NO_ESTIMATE}): the stability verdicts (linearised at f_0), "
              "the sweep and the prediction are those of the truncated kernel; "
              f"{LOW_RANK_WORDS}, so a rate inside it can still be outside for the full "
              "kernel. " + _caveat(cfg.prediction.kernel, cfg.architecture.width, cfg=cfg))
    return CheckReport(
        config=cfg.to_dict(), kernel=cfg.prediction.kernel, width=cfg.architecture.width,
        topology=name, algorithm=cfg.training.algorithm, lr=lr,
        target_loss=cfg.prediction.target_loss, horizon=int(cfg.training.steps),
        stability=verdicts, inside=chosen.inside, prediction=prediction, sweep=sweep,
        recommended=_recommend(sweep, chosen.stable_rates), caveat=caveat,
        kernel_layout="full",
        timings={"kernel_s": times[1] - times[0], "stability_s": t_stab - times[1],
                 "prediction_s": t_end - t_stab, "topologies_and_edge_s": 0.0,
                 "total_s": t_end - times[0]},
        versions=versions(), low_rank=low, loss=cfg.training.loss,
        network=_network_name(f0, cfg))


def _network_outputs(exp: Experiment, params) -> dict:
    """``f0_train`` / ``f0_test`` of the network initialised with ``params``."""
    data, arch = exp.parts.dataset, exp.arch
    return {"f0_train": np.asarray(arch.apply(params, data.x_train)),
            "f0_test": np.asarray(arch.apply(params, data.x_test)) if data.num_test > 0
            else None}


#: training rows on which each rate of the low-rank squared-loss sweep evaluates the agents'
#: accuracies (all rows up to this many, else a random subset drawn with ``seed``): per record
#: they cost ``Q n r K`` flops, the rest of a record ``Q r^2 K`` (:mod:`ntkdyn.lowrank.evolve`)
LOW_RANK_SWEEP_ACC_ROWS = 10_000


def _lowrank_sweep(factor, exp: Experiment, cfg: Config, chosen: AlgorithmVerdict, steps,
                   algo, outputs: dict) -> list[dict]:
    """The exact check's sweep (:data:`SWEEP_FRACTIONS` of ``lr*``, none when no rate or
    every rate is stable) on the one ``factor``, for the network whose ``final_*`` fields
    the check reports (the mean network, or with ``outputs`` the given network's ``f_0``).

    Squared loss with a static ``W``: one run with the rates as column groups
    (:func:`ntkdyn.lowrank.predict_lowrank_sweep`, each rate equal to its own
    ``predict_lowrank``; accuracies at the last record only, which is all the sweep
    reports of them; in the Gram form float32 Gram products, :data:`SWEEP_DTYPE`, the
    state float64, as the exact check's float32 kernel); with a mixing sequence one run
    too, the rates times the mixing groups (:func:`_sweep_sequences` sampled sequences and
    ``E[W]``) as column groups (:func:`~ntkdyn.lowrank.gossip.
    predict_lowrank_process_sweep`, each rate equal to its own
    ``predict_lowrank_process``, in blocks of rates that fit); training accuracies on at
    most :data:`LOW_RANK_SWEEP_ACC_ROWS` rows.  Cross-entropy: one run with the rates as
    column groups (:func:`~ntkdyn.lowrank.cross_entropy.predict_lowrank_ce_sweep`; with
    random gossip one rate per pass, each over :func:`_sweep_sequences` sampled sequences
    and ``E[W]``: all rates in one pass was slower on CPU, README), the records from the
    training outputs at the last record only (the sweep reports the final training loss
    and accuracy, and the test loss at every record)."""
    from ntkdyn import lowrank

    data, agent, target = exp.parts.dataset, exp.parts.agent, cfg.prediction.target_loss
    rates = ([float(f * chosen.lr_star) for f in SWEEP_FRACTIONS]
             if 0 < chosen.lr_star < np.inf else [])
    if not rates:
        return []
    kw = dict(y_test=data.y_test if data.num_test > 0 else None, reference=False, **outputs)
    if cfg.training.loss == "cross_entropy":
        from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce_sweep

        w, scale = _lowrank_mixing(exp), exp.loss["logit_scale"]
        random = gossip.is_process(w) and w.random
        # one run, the rates as column groups; with random gossip one rate per pass (its
        # sequences and E[W] as column groups): all rates in one pass measured 0.82x as
        # fast on 2 CPU cores (benchmarks/lowrank_process_sweep.py --loss cross_entropy)
        trajs = predict_lowrank_ce_sweep(factor, data.y_train, agent, w, rates, steps, algo,
                                         logit_scale=scale,
                                         samples=_sweep_sequences(exp, cfg) if random
                                         else None,
                                         rate_block=1 if random else None,
                                         train_records="final", **kw)
        return [_summarise(t, target) for t in trajs]
    n = data.num_train
    kw.update(seed=cfg.seed, acc_rows=None if n <= LOW_RANK_SWEEP_ACC_ROWS
              else LOW_RANK_SWEEP_ACC_ROWS)
    if gossip.is_process(exp.mixing):  # one pass: rates x mixing groups as column groups
        from ntkdyn.lowrank.gossip import predict_lowrank_process_sweep

        trajs = predict_lowrank_process_sweep(factor, data.y_train, agent, exp.mixing, rates,
                                              steps, algo,
                                              samples=_sweep_sequences(exp, cfg),
                                              accuracies="final", **kw)
    else:  # one run, the rates as column groups (each step reads G_q once for all), with
        # float32 Gram products as the exact check's float32 kernel (measured on digits,
        # rank 128 / 400, 2,000 steps: losses within 2.4e-7, accuracies and statuses equal)
        trajs = lowrank.predict_lowrank_sweep(factor, data.y_train, agent,
                                              np.asarray(exp.mixing, dtype=float), rates,
                                              steps, algo, accuracies="final",
                                              products=SWEEP_DTYPE, **kw)
    return [_summarise(t, target) for t in trajs]


def _lowrank_ce_prediction(factor, exp: Experiment, cfg: Config, chosen: AlgorithmVerdict,
                           steps, algo, outputs: dict) -> dict | None:
    """Inside the regime, the chosen rate's cross-entropy prediction on the one ``factor``
    (mean network, or the network's own ``f_0`` with ``outputs``); ``None`` outside.  A
    one-rate :func:`~ntkdyn.lowrank.cross_entropy.predict_lowrank_ce_sweep` (equal to
    ``predict_lowrank_ce``) with the training records at the last record only, all the
    report reads of them."""
    if not chosen.inside:
        return None
    from ntkdyn.lowrank.cross_entropy import predict_lowrank_ce_sweep

    data = exp.parts.dataset
    (traj,) = predict_lowrank_ce_sweep(
        factor, data.y_train, exp.parts.agent, _lowrank_mixing(exp), [cfg.training.lr],
        steps, algo, y_test=data.y_test if data.num_test > 0 else None, reference=False,
        logit_scale=exp.loss["logit_scale"], samples=exp.samples, train_records="final",
        **outputs)
    return _summarise(traj, cfg.prediction.target_loss)


def _lowrank_ce_networks(factor, exp: Experiment, cfg: Config, steps, algo) -> dict:
    """One random network with cross-entropy on the factor (as the exact check's
    ``one_random_network``): ``prediction.samples`` networks (default
    :data:`~ntkdyn.dynamics.random_init.DEFAULT_INDEPENDENT_NETWORKS`), ``K`` NNGP draw
    columns each from the rank-``r`` NNGP factor (:mod:`ntkdyn.lowrank.networks`),
    :func:`~ntkdyn.lowrank.cross_entropy.predict_random_lowrank_ce`."""
    from ntkdyn.dynamics.random_init import DEFAULT_INDEPENDENT_NETWORKS
    from ntkdyn.lowrank import networks
    from ntkdyn.lowrank.cross_entropy import predict_random_lowrank_ce

    data, target = exp.parts.dataset, cfg.prediction.target_loss
    has_test, k = data.num_test > 0, data.y_train.shape[1]
    nngp = lowrank_nngp_source(exp.arch, data.x_train, data.x_test if has_test else None)
    p = cfg.prediction.samples or DEFAULT_INDEPENDENT_NETWORKS
    draws, info = networks.nngp_draws(nngp, data.num_train, p * k, cfg.seed,
                                      rank=factor.rank)
    traj = predict_random_lowrank_ce(factor, dataclasses.replace(draws, outputs=k),
                                     data.y_train, exp.parts.agent,
                                     _lowrank_mixing(exp), cfg.training.lr,
                                     steps, algo, y_test=data.y_test if has_test else None,
                                     reference=False, draws_info=info,
                                     logit_scale=exp.loss["logit_scale"])
    return _one_network_fields(traj, target)


def _lowrank_prediction(factor, exp: Experiment, cfg: Config, params, steps, algo) -> dict:
    """The chosen rate's prediction on the low-rank factor, following
    :func:`ntkdyn.predict`'s default ``f0`` (:func:`ntkdyn.prediction.resolve_f0`): with
    the analytic kernel, one random network (``f_0`` drawn from the rank-``r`` NNGP factor
    of the pooled inputs plus the residual diagonal, :mod:`ntkdyn.lowrank.networks`;
    ``prediction.samples`` networks, default
    :data:`~ntkdyn.dynamics.random_init.DEFAULT_NETWORKS`) in ``one_random_network``
    (expected values and 5-95 % band over initialisations), the ``final_*`` fields being its
    mean network (``f_0 = 0``); ``f0 = "mean"``: the mean network alone; the empirical
    kernel: the given network's own ``f_0``.  Those two run as a one-rate sweep with the
    accuracies at the last record only (all the report reads of them)."""
    from ntkdyn import lowrank
    from ntkdyn.dynamics.random_init import DEFAULT_NETWORKS
    from ntkdyn.lowrank import networks

    data, arch, target = exp.parts.dataset, exp.arch, cfg.prediction.target_loss
    has_test = data.num_test > 0
    f0 = resolve_f0(cfg.prediction.f0 or None, cfg.prediction.kernel, low_rank=True)
    process = gossip.is_process(exp.mixing)
    args = (data.y_train, exp.parts.agent,
            exp.mixing if process else np.asarray(exp.mixing, dtype=float),
            cfg.training.lr, steps, algo)
    kw = dict(y_test=data.y_test if has_test else None, reference=False, seed=cfg.seed)
    one = None
    if f0 == "random":
        nngp = lowrank_nngp_source(arch, data.x_train, data.x_test if has_test else None)
        if process and exp.mixing.random:  # independent networks, s on sequence s
            traj = _random_gossip_networks(factor, nngp, exp, cfg, args, kw)
        else:
            draws, _ = networks.nngp_draws(nngp, data.num_train,
                                           cfg.prediction.samples or DEFAULT_NETWORKS,
                                           cfg.seed, rank=factor.rank)
            traj = networks.predict_random_lowrank(factor, draws, *args, **kw)
        one = _one_network_fields(traj, target)
        traj = traj.mean_network
    else:
        if f0 == "network":  # the given network's own f_0
            kw.update(f0_train=np.asarray(arch.apply(params, data.x_train)),
                      f0_test=np.asarray(arch.apply(params, data.x_test)) if has_test
                      else None)
        # the report reads the accuracies at the last record only: computed there alone
        # (the one-rate sweep equals predict_lowrank / predict_lowrank_process to round-off;
        # per record the accuracies cost (Q + 1) (N + M) r K flops, the rest (Q + 1) r^2 K)
        one_rate = (*args[:3], [args[3]], *args[4:])
        if process:  # random gossip (lowrank.gossip): mean over the sampled sequences
            from ntkdyn.lowrank.gossip import predict_lowrank_process_sweep

            (traj,) = predict_lowrank_process_sweep(factor, *one_rate, samples=exp.samples,
                                                    accuracies="final", **kw)
        else:
            (traj,) = lowrank.predict_lowrank_sweep(factor, *one_rate, accuracies="final",
                                                    **kw)
    prediction = _summarise(traj, target)
    prediction.update(one_random_network=one, **_lowrank_steady_state(factor, exp, cfg, algo,
                                                                      f0, kw))
    return prediction


#: largest steady-state system (unknowns) ``ntkdyn check`` solves densely on the low-rank
#: path (four ``dim x dim`` arrays, 0.5 GB, and an LU of about 1 s at 4,096); DGD with a
#: symmetric W is solved by conjugate gradients at any size
LOW_RANK_FIXED_POINT_MAX = 4096


def _lowrank_steady_state(factor, exp: Experiment, cfg: Config, algo, f0: str,
                          kw: dict) -> dict:
    """The steady state of the ``final_*`` fields' network (the mean network, or the given
    one's ``f_0`` with the empirical kernel) on the low-rank coordinates
    (:func:`ntkdyn.lowrank.steady_state.lowrank_fixed_point`: the truncated dynamics'
    fixed point; ``E[W]`` for random gossip); none for a periodic sequence, and a note
    instead above :data:`LOW_RANK_FIXED_POINT_MAX` unknowns."""
    from ntkdyn.dynamics.stability import state_structure
    from ntkdyn.lowrank.steady_state import cg_applies, lowrank_fixed_point, solved_schedule

    none = dict(steady_state_consensus_gap=None, steady_state_distance_to_centralised=None,
                steady_state_test_loss=None)
    if gossip.is_process(exp.mixing) and not exp.mixing.random:
        return none
    w = gossip.resolve_mixing(exp.mixing, name="topology")[0]  # W, or E[W] of random gossip
    system = solved_schedule(algo, w, learning_rates(cfg.training.lr, exp.parts.num_agents))
    unknowns = 0 if system is None else \
        state_structure(system)[1] * exp.parts.num_agents * factor.rank
    if unknowns > LOW_RANK_FIXED_POINT_MAX and not cg_applies(system, exp.mixing):
        return dict(none, steady_state_note=(
            f"not computed on the low-rank coordinates: {unknowns:,} unknowns (state blocks x "
            f"agents x rank) above the {LOW_RANK_FIXED_POINT_MAX:,} solved densely in a check "
            "(conjugate gradients take DGD with a symmetric or reversible W only); "
            "ntkdyn.lowrank.steady_state.lowrank_fixed_point solves it by GMRES"))
    given = {} if f0 == "random" else {key: kw.get(key) for key in ("f0_train", "f0_test")}
    fp = lowrank_fixed_point(factor, exp.parts.dataset.y_train, exp.parts.agent, exp.mixing,
                             algo, cfg.training.lr, y_test=kw.get("y_test"),
                             verify=False, **given)  # called inside the stable set
    return dict(steady_state_consensus_gap=fp.consensus_gap,
                steady_state_distance_to_centralised=fp.central_gap,
                steady_state_test_loss=None if fp.test_loss is None
                else float(np.mean(fp.test_loss)))


def _random_gossip_networks(factor, nngp, exp: Experiment, cfg: Config, args, kw):
    """One random network with random gossip on the low-rank path
    (:func:`ntkdyn.lowrank.gossip.predict_random_lowrank_gossip`): ``S`` networks of ``K``
    draw columns each (``S`` the sampled sequences, as the exact path's)."""
    import dataclasses

    from ntkdyn.dynamics.random_init import DEFAULT_INDEPENDENT_NETWORKS
    from ntkdyn.lowrank.gossip import predict_random_lowrank_gossip
    from ntkdyn.lowrank.networks import nngp_draws

    data = exp.parts.dataset
    p, k = exp.samples or DEFAULT_INDEPENDENT_NETWORKS, data.y_train.shape[1]
    draws, _ = nngp_draws(nngp, data.num_train, p * k, cfg.seed, rank=factor.rank)
    return predict_random_lowrank_gossip(factor, dataclasses.replace(draws, outputs=k),
                                         *args, **kw)


def _check_topologies(exp: Experiment, names: list[str]) -> None:
    """Every compared topology builds for this experiment's agents, before any kernel:
    a bad ``--topologies`` entry is an error naming it, not a failure after the report."""
    for name in names:
        try:
            exp.with_topology(name)
        except (ConfigError, ValueError) as err:
            reason = str(err).removeprefix("config: ").removeprefix("topology: ")
            raise ConfigError(f"--topologies: {name!r}: {reason}") from None


def _topology_row(exp: Experiment, name: str, cfg: Config) -> dict:
    other = exp.with_topology(name)
    problem = build_problem(other.arch, other.parts, other.mixing,
                            kernel=cfg.prediction.kernel, seed=cfg.seed, **other.loss)
    # random gossip: the expected matrix's spectrum (the mean-state dynamics); a reversible
    # W (the uniform rule) has the real spectrum of its symmetrised Pi^{1/2} W Pi^{-1/2}
    w, _ = gossip.resolve_mixing(other.mixing)
    sym = graphs.symmetrised(w)
    row = {"topology": name, "lambda_min": None if sym is None else graphs.lambda_min(sym),
           "spectral_gap": graphs.spectral_gap(w)}
    rep = stability_of(problem, other.algorithm, cfg.training.lr)
    row.update(lr_star=rep.lr_star, lr_bound=rep.lr_bound, inside=rep.stable)
    if rep.stable:
        traj = run_problem(problem, other.algorithm, [cfg.training.lr], cfg.steps,
                           check_stability=False, reference=False,
                           samples=_sweep_sequences(other, cfg))[0]
        s = _summarise(traj, cfg.prediction.target_loss)
        row.update(final_test_loss=s["final_test_loss"], final_test_acc=s["final_test_acc"],
                   steps_to_target=s["steps_to_target"])
    else:
        row.update(final_test_loss=None, final_test_acc=None, steps_to_target=None)
    return row


def _fmt(x, spec=".4g"):
    if x is None:
        return "-"
    s = format(x, spec)
    return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0.000"


def _render(r: CheckReport) -> str:
    """The text report of :func:`check`, one section after another."""
    lines = [f"ntkdyn check: {r.algorithm.upper()} at lr={r.lr:g} on a {r.topology} of "
             f"{r.config['partition']['agents']} agents, width {r.width}, {r.kernel} NTK, "
             f"{r.horizon} steps", ""]
    lines += _stability_lines(r)
    lines += _prediction_lines(r)
    lines += _minibatch_lines(r.minibatch)
    lines += _sweep_lines(r)
    lines += _topology_lines(r)
    if r.edge is not None:
        e = r.edge
        lines += ["", "Observed edge of real training (--measure-edge, real network, "
                  f"{e['steps']} steps):",
                  f"  converged at lr={_fmt(e['converged_lr'])}, did not converge at "
                  f"lr={_fmt(e['diverged_lr'])} (lr* of the linearised dynamics: "
                  f"{e['lr_star']:.4g}); rates tried: "
                  + ", ".join(f"{t['lr']:.4g} ({'ok' if t['converged'] else 'diverged'})"
                              for t in e["trials"])]
    lines += finite_width_lines(r.finite_width)
    lines += ["", r.caveat, _exit_line(r), f"(total {r.timings['total_s']:.1f} s)"]
    return "\n".join(lines)


def _exit_line(r: CheckReport) -> str:
    """What the exit status says, and of which quantity (:attr:`CheckReport.target_of`)."""
    if not r.inside:
        return f"Exit status 1: {r.algorithm.upper()} at lr={r.lr:g} is outside the NTK regime."
    if r.trajectory_status != "ok":
        return (f"Exit status 1: inside the NTK regime by the operator, but the predicted "
                f"trajectory at lr={r.lr:g} is {r.trajectory_status} (see the prediction).")
    if r.target_reached:
        return (f"Exit status 0: inside the NTK regime, and {r.target_of} reaches the target "
                f"{r.target_loss:g}.")
    return (f"Exit status 1: inside the NTK regime, but {r.target_of} does not reach the "
            f"target {r.target_loss:g} within {r.horizon} steps.")


def _bound_text(bound: float) -> str:
    """The sufficient bound for the table: ``"none"`` where no bound applies (``nan``:
    e.g. gradient tracking with more than one agent)."""
    return "none" if np.isnan(bound) else f"{bound:.5g}"


def _stability_lines(r: CheckReport) -> list[str]:
    """The verdict table (spectral radius, lr*, sufficient bound, margin) and words."""
    if r.low_rank is None:
        lines = ["Stability of the linearised dynamics (NTK regime):"]
    else:
        lines = [f"Stability of the linearised dynamics (NTK regime) on the rank-"
                 f"{r.low_rank['rank']} coordinates of the low-rank path (LOW-RANK verdict:",
                 f"  {LOW_RANK_WORDS}):"]
    width = max(5, *(len(v.algorithm) for v in r.stability))
    lines.append(f"  {'algo':<{width}} spectral radius   lr* (exact)   sufficient bound   margin"
                 "   regime")
    for v in r.stability:
        radius = "n/a" if np.isnan(v.spectral_radius) else f"{v.spectral_radius:.6f}"
        lines.append(f"  {v.algorithm:<{width}} {radius:>15} {v.lr_star:>13.5g} "
                     f"{_bound_text(v.lr_bound):>18} {v.margin:>+8.0%}   "
                     f"{'inside' if v.inside else 'OUTSIDE'}")
    lines.append("")
    for v in r.stability:
        lines.append("  " + v.verdict)
        if v.operator != "one step":
            lines.append(f"    (operator: {v.operator})")
        budget = [part for part in v.method.split("; ") if "Krylov products" in part]
        if budget:  # lr* or a scan verdict short of the exact search (SEARCH_PRODUCTS)
            lines.append(f"    (search cut short: {'; '.join(budget)})")
    notes = {v.note for v in r.stability if v.note}
    if notes:  # the same words for every schedule: once
        lines.append("  Cross-entropy: " + next(iter(notes)).split(": ", 1)[-1]
                     + " (the sufficient bound column).")
    if r.minibatch is not None:
        lines.append(f"  Mini-batch SGD (batch size {r.minibatch['batch_size']}): "
                     f"{r.minibatch['statement']}.")
    return lines + [""]


def _prediction_lines(r: CheckReport) -> list[str]:
    """The prediction at the horizon: one random network's expected values and band, the
    mean network, steps to the target loss, the steady state."""
    if r.prediction is None:
        return [f"Predictions withheld: {r.algorithm.upper()} at lr={r.lr:g} is outside the "
                "NTK regime (see above)."]
    p = r.prediction
    reached = (f"reached at step {p['steps_to_target']}" if p["steps_to_target"] is not None
               else "not reached")
    one = p.get("one_random_network")
    lines = [f"Prediction at step {r.horizon} (network mean over agents, linearised "
             "dynamics):"]
    for run in (p, one or {}):
        if run.get("status", "ok") != "ok":
            lines.append("  " + (run.get("growing") or f"status {run['status']}"))
            break
    if one is not None:
        def exp_band(metric, fmt):
            lo, hi = one[f"final_{metric}_band"]
            if one["samples"] == 1:  # one draw: not an expectation, no band
                return (f"{one[f'final_{metric}_expected']:{fmt}} (samples = 1: one draw, "
                        "not an expected value; no band)")
            return (f"{one[f'final_{metric}_expected']:{fmt}} expected (5-95 %: "
                    f"{lo:{fmt}}-{hi:{fmt}})")
        hit = one["steps_to_target_expected"]
        kinds = [k for k, on in (("mini-batch", r.config["training"].get("batch_size")),
                                 ("gossip", r.config["topology"].get("gossip"))) if on]
        joint = (f" and {' and '.join(kinds)} sequences jointly, network s on sequence s"
                 if kinds else "")
        lines += [f"  one random network (over {one['samples']} sampled initialisations"
                  f"{joint}, as ntkdyn predict):",
                  f"    test loss {exp_band('test_loss', '.4g')}",
                  f"    test acc  {exp_band('test_acc', '.3f')}",
                  f"    train loss {exp_band('train_loss', '.4g')}"]
        if one.get("final_test_loss_mc_error") is not None:
            bound = " (a bound: the networks share draw columns)" \
                if one.get("mc_error_is_bound") else ""
            lines.append(f"    Monte-Carlo standard error of those expected values{bound}: "
                         f"test loss {one['final_test_loss_mc_error']:.2g}, test acc "
                         f"{one['final_test_acc_mc_error']:.2g}")
    # which network the final_* fields are (with cross-entropy the f0 = 0 run is not the
    # mean network: not affine in f0)
    name = r.network.split(" (")[0]
    label = f"  {r.network}: "
    lines += [f"{label}train loss {p['final_train_loss']:.4g}, test loss "
              f"{p['final_test_loss']:.4g}, train acc {p['final_train_acc']:.3f}, test acc "
              f"{p['final_test_acc']:.3f}",
              f"  target test loss {r.target_loss:g}: {reached}"
              + (f" ({name}); expected loss of one random network: "
                 + (f"reached at step {hit}" if hit is not None else "not reached")
                 if one is not None else "")]
    if p.get("steady_state_note"):
        lines.append(f"  steady state: none ({p['steady_state_note']})")
    elif p["steady_state_consensus_gap"] is None:
        lines.append("  steady state: none (a periodic mixing sequence ends on a periodic "
                     "orbit)")
    else:
        lines.append(f"  steady state: consensus gap {p['steady_state_consensus_gap']:.3g}"
                     f", distance to the centralised solution "
                     f"{p['steady_state_distance_to_centralised']:.3g}"
                     + (" (of the truncated dynamics, on the low-rank coordinates)"
                        if r.low_rank is not None else ""))
    return lines


def _minibatch_lines(mb: dict | None) -> list[str]:
    """The chosen rate over sampled mini-batch sequences (mean and 5-95 % band)."""
    if mb is None or "final_test_loss_mean" not in mb:
        return []

    def band(metric, fmt):
        lo, hi = mb[f"final_{metric}_band"]
        return f"{mb[f'final_{metric}_mean']:{fmt}} mean (5-95 %: {lo:{fmt}}-{hi:{fmt}})"
    hit = mb["steps_to_target_mean"]
    lines = [f"  mini-batch SGD, batch size {mb['batch_size']} ({mb['batch_sampling']} "
             f"sampling), over {mb['samples']} sampled batch sequences, from "
             f"{mb.get('starts_from', 'the configured f0')}:",
             f"    test loss {band('test_loss', '.4g')}",
             f"    test acc  {band('test_acc', '.3f')}",
             f"    train loss {band('train_loss', '.4g')}"]
    if mb.get("status", "ok") != "ok":
        lines.append("    " + (mb.get("growing") or f"status {mb['status']}"))
    if mb.get("final_test_loss_mc_error") is not None:
        lines.append(f"    Monte-Carlo standard error of those means: test loss "
                     f"{mb['final_test_loss_mc_error']:.2g}, test acc "
                     f"{mb['final_test_acc_mc_error']:.2g}")
    return lines + ["    target test loss (mean over sequences): "
                    + (f"reached at step {hit}" if hit is not None else "not reached")]


def _sweep_lines(r: CheckReport) -> list[str]:
    """The learning-rate sweep table and the recommended rate."""
    how = ("one batched prediction" if r.low_rank is None else
           f"every rate on the one rank-{r.low_rank['rank']} factor")
    lines = ["", f"Learning-rate sweep ({r.algorithm.upper()}, the {r.network}, rates up to "
             f"lr*, {how}):"]
    sampled = [s for s in r.sweep if "sequences" in s]
    if sampled:
        lines.append(f"  (random gossip: the mean over {sampled[0]['sequences']} sampled mixing "
                     "sequences per rate, the same for every rate; +- one Monte-Carlo "
                     "standard error)")
    if not r.sweep:  # the sweep runs fractions of a finite, positive lr*
        lines.append("  no rate swept: lr* is 0 (unstable at every rate) or unbounded (stable "
                     "at every rate); no rate is recommended")
        return lines
    lw, aw = (22, 15) if sampled else (15, 10)
    lines.append(f"  {'lr':<11} {'final test loss':>{lw}} {'test acc':>{aw}}   steps to target")

    def err(value, fmt):
        return "" if value is None else f" +- {value:{fmt}}"

    for s in r.sweep:
        hit = s["steps_to_target"]
        loss = f"{s['final_test_loss']:.4g}{err(s.get('final_test_loss_mc_error'), '.2g')}"
        acc = f"{s['final_test_acc']:.3f}{err(s.get('final_test_acc_mc_error'), '.3f')}"
        lines.append(f"  {s['lr']:<11.4g} {loss:>{lw}} {acc:>{aw}}   "
                     f"{'not reached' if hit is None else hit}"
                     + ("" if s["status"] == "ok" else f"   ({s['status']})"))
    if r.recommended:
        lines.append(f"  recommended lr = {r.recommended['lr']:.4g} ({r.recommended['reason']}; "
                     f"the {r.network})")
    return lines


def _topology_lines(r: CheckReport) -> list[str]:
    """The topology comparison table (``--topologies``)."""
    if not r.topologies:
        return []
    lines = ["", "Topology comparison (same agents, mixing rule and rate):",
             "  topology      lambda_min   gap      lr*        regime    test loss   "
             "steps to target"]
    for t in r.topologies:
        lines.append(f"  {t['topology']:<12} {_fmt(t['lambda_min'], '.3f'):>10} "
                     f"{_fmt(t['spectral_gap'], '.3f'):>6} {t['lr_star']:>9.4g}   "
                     f"{'inside' if t['inside'] else 'OUTSIDE':<8} "
                     f"{_fmt(t['final_test_loss']):>10}   "
                     f"{_fmt(t['steps_to_target'], 'd') if t['steps_to_target'] else '-'}")
    return lines


def finite_width_report(exp: Experiment, cfg: Config, f0: str) -> dict | None:
    r"""``[prediction] width = n``: the finite-width band at the horizon (5-95 % over
    ``width_samples`` networks of width ``n``, :func:`ntkdyn.finite_width.width_draws`);
    ``[prediction] width_tol``: the smallest width whose band of ``width_metric`` has a
    5-95 % half-width ``<= width_tol`` at the horizon (:func:`ntkdyn.width_for`, the
    ``c n^{-1/2}`` law fitted at widths 128, 256, 512 with ``width_samples`` kernels each;
    the configured loss, logit scale and batch size passed through, so with cross-entropy a
    tolerance on a loss is in nats; ``width_for.quantity`` says what it bounds).
    ``None`` when neither is set.  Both are the spread of the linearised prediction over
    the networks' kernels *at initialisation* (``theory/finite_width.md`` section 6): the
    kernel's motion during training is not in them."""
    from ntkdyn import finite_width as fw

    p = cfg.prediction
    if not (p.width or p.width_tol):
        return None
    t0 = time.perf_counter()
    out: dict = {"note": "spread of the linearised prediction over width-n networks' "
                         "empirical kernels at initialisation; the kernel's motion during "
                         "training is not included (theory/finite_width.md section 6)"}
    t = cfg.training
    if t.batch_size:
        out["minibatch_note"] = minibatch_width_note(t.batch_sampling, t.loss)
    if p.width:
        draws, info = fw.width_draws(exp.arch, exp.parts, exp.mixing, t.lr, exp.algorithm,
                                     cfg.steps, width=p.width, samples=p.width_samples,
                                     seed=cfg.seed, f0=f0, init_samples=p.samples or None,
                                     batch_size=t.batch_size, batch_sampling=t.batch_sampling,
                                     **exp.loss)
        band = {"width": p.width, "samples": p.width_samples, "f0": info["f0"],
                "statuses": info["statuses"]}
        for metric in ("train_loss", "test_loss", "train_acc", "test_acc"):
            if metric in draws:
                last = draws[metric][:, -1]  # (S, Q)
                band[f"final_{metric}_band"] = [float(v) for v in
                                                np.nanquantile(last, [0.05, 0.95],
                                                               axis=0).mean(axis=1)]
        out["band"] = band
    if p.width_tol:
        try:
            est = fw.width_for(exp.arch, exp.parts, exp.mixing, lr=cfg.training.lr,
                               steps=cfg.steps, algorithm=exp.algorithm, metric=p.width_metric,
                               tol=p.width_tol, samples=p.width_samples, seed=cfg.seed,
                               f0=f0, init_samples=p.samples or None,
                               batch_size=t.batch_size, batch_sampling=t.batch_sampling,
                               **exp.loss)
            out["width_for"] = {"width": est.width, "metric": est.metric, "tol": est.tol,
                                "loss": est.loss, "quantity": est.quantity,
                                "level": est.level, "constant": est.constant,
                                "slope": est.slope, "law_holds": est.law_holds,
                                "widths": list(est.widths), "spreads": list(est.spreads),
                                "samples": est.samples, "error": None}
        except ValueError as exc:  # unstable kernels at the rate, or beyond max_width
            out["width_for"] = {"width": None, "metric": p.width_metric, "tol": p.width_tol,
                                "loss": t.loss, "error": str(exc)}
    out["seconds"] = time.perf_counter() - t0
    return out


def minibatch_width_note(batch_sampling: str, loss: str = "mse") -> str:
    r"""One line for the finite-width section with ``batch_size > 0``.  Squared loss: the
    width draws run each width-``n`` kernel's *full-batch* dynamics, which is the expected
    mini-batch SGD trajectory of the linearised model, :math:`\mathbb{E}[f_t] =` full-batch
    :math:`f_t` (``theory/minibatch_sgd.md`` section 3): exactly with
    ``batch_sampling="independent"``, to first order in the rate with ``"epoch"``; the
    batch noise is in the mini-batch band, not in this one.  Cross-entropy (no exact
    expected trajectory): each kernel runs mini-batch SGD on the prediction's sampled
    batch sequences (same seed), each draw the mean over them (``theory/finite_width.md``
    section 7)."""
    if loss != "mse":
        return ("mini-batch SGD with cross-entropy (no exact expected trajectory): each "
                "width-n kernel runs SGD on the same sampled batch sequences (and f_0 "
                "draws) as the infinite-width prediction, each draw their mean; the batch "
                "noise common to both is not in this band")
    exact = ("exact with batch_sampling='independent'" if batch_sampling == "independent"
             else f"to first order in the rate with batch_sampling={batch_sampling!r}")
    return ("mini-batch SGD: the width draws run each kernel's full-batch dynamics, the "
            f"expected SGD trajectory of the linearised model ({exact}); the batch noise is "
            "not in this band")


def finite_width_lines(fw: dict | None) -> list[str]:
    """Rendered lines of :func:`finite_width_report` (none when it is ``None``)."""
    if fw is None:
        return []
    lines = ["", "Finite width (linearised prediction over networks' empirical kernels at "
             "initialisation; their motion during training is not included):"]
    if fw.get("minibatch_note"):
        lines.append(f"  {fw['minibatch_note']}")
    band = fw.get("band")
    if band is not None:
        def rng(metric, fmt):
            lo, hi = band[f"final_{metric}_band"]
            return f"{lo:{fmt}}-{hi:{fmt}}"
        bad = sum(v for k, v in band["statuses"].items() if k != "ok")
        lines.append(f"  width {band['width']} ({band['samples']} networks): test loss 5-95 %: "
                     f"{rng('test_loss', '.4g')}, test acc 5-95 %: {rng('test_acc', '.3f')}"
                     + (f" ({bad} of {band['samples']} unstable at this rate)" if bad else ""))
    est = fw.get("width_for")
    if est is not None:
        what = est["metric"].replace("_", " ")
        tol = f"{est['tol']:g}" + (" nats" if est.get("loss") == "cross_entropy" and
                                   est["metric"].endswith("loss") else "")
        if est["width"] is None:
            lines.append(f"  width for {what} within {tol}: not found: {est['error']}")
        else:
            pts = ", ".join(f"{w}: {h:.3g}" for w, h in zip(est["widths"], est["spreads"],
                                                            strict=True))
            lines.append(f"  width for {what} within {tol} (5-95 % half-width at the "
                         f"horizon): {est['width']} (fitted {est['constant']:.3g} / sqrt(n), "
                         f"free slope {est['slope']:.2f}; half-widths {pts})")
            if not est["law_holds"]:
                lines.append("    NOT in the n^-1/2 regime at these widths (free slope not "
                             "within 0.25 of -1/2): the width is not to be trusted")
    lines.append(f"  ({fw['seconds']:.1f} s)")
    return lines
