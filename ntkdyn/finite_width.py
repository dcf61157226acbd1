r"""The finite-width band: the prediction over the empirical kernels of width-``n`` networks.

The analytic kernels are the ``n -> infinity`` limits of the empirical NTK and NNGP of a
network at initialisation.  At width ``n`` (every hidden layer of width ``n``) they are
random, ``Theta_n = Theta + O(n^{-1/2})`` entrywise (a mean over ``n`` independent
neurons per layer; ``theory/finite_width.md`` section 2).  This module draws ``S`` such
kernels and runs the same kernel-space prediction with each:

* sample ``s`` is the network of width ``n`` initialised with seed ``seed + s``
  (:func:`ntkdyn.init_params`, the network :func:`ntkdyn.train.train` starts from with that
  seed), its empirical NTK ``Theta_s`` (:func:`ntkdyn.kernels.empirical.mlp_empirical_ntk`,
  traced) and its empirical NNGP ``K_s = (W_std^2 / n_L) h_L h_L^T + b_std^2`` (the
  covariance of the outputs over the readout layer's weights given the hidden layers);
* with ``f0="random"`` every sample averages over the same standard-normal draws
  ``z_j`` (``f_0 = L_s z_j``, ``L_s L_s^T = K_s``: common random numbers, so the spread
  between samples is that of the kernels, not of the draws); with ``f0="mean"`` each
  sample is the mean network ``f_0 = 0`` under ``Theta_s``;
* the per-agent metrics of every sample are kept, ``(S, T, Q)``, in
  :attr:`ntkdyn.trajectory.Trajectory.width_draws`; ``traj.band(metric, lo, hi,
  over="width")`` gives their quantiles, apart from the band over initialisations
  (``over="init"``).

What the band is (``theory/finite_width.md`` section 6): the spread, over networks of
width ``n``, of the *linearised* prediction with each network's kernels at
initialisation, ``E_{f_0}[loss | Theta_s, K_s]``.  By the law of total variance the
variance of one network's loss is the mean of the variance over ``f_0`` given the kernels
(the initialisation band) plus the variance of this conditional mean (the width band),
up to the dependence of ``Theta`` on the readout weights.  Neither band contains the
motion of the kernel during training (also ``O(n^{-1/2})``).

:func:`width_for` fits ``spread(n) = c n^{-1/2}`` to the band's half-width at the horizon
measured at two or three widths, and returns the smallest width within a tolerance, for
either loss and for full batch or mini-batch SGD (the loss, logit scale and batch size go
to the width draws; with cross-entropy a tolerance on a loss is in nats;
:func:`width_quantity` says what it bounds).

Mini-batch SGD (``batch_size > 0``, squared loss only).  The width draws run each
width-``n`` kernel's **full-batch** dynamics.  For the linearised model with the squared
loss one SGD step is affine in the state with an unbiased random gradient, so the expected
state over batch sequences is full-batch training: exactly with independent draws
(``batch_sampling="independent"``), to first order in the rate with the default
``"epoch"`` draws (dependent within an epoch; ``theory/minibatch_sgd.md`` section 3).  The
width draws are then the spread over kernels of the expected trajectory, the batch noise
being in the joint init+batch band of the infinite-width prediction
(``metadata["band_over"] == "init+batch"``); ``over="calibrated"`` adds the two as for
full batch, the finite-width shift of the mean measured against the infinite-width
*full-batch* prediction from the same standard-normal draws (kept as
``width_draws["paired/<metric>"]``; against the SGD draws the shift would absorb the
batch noise's excess loss).  With cross-entropy ``softmax(f)`` is not linear in ``f`` and
the expected SGD trajectory is not full-batch training (no closed form).  The width draws
then run **mini-batch SGD** on each width-``n`` kernel with the infinite-width prediction's
own sampled networks: network ``i`` from the same standard-normal draw ``z_i``
(``f_0 = L_s z_i``) and on the same batch sequence ``i`` (same ``seed``), width draw ``s``
being their mean; the paired draws are the infinite-width prediction's draws themselves
(same ``z_i``, same sequences), so the shift of the mean is measured with the init and
batch noise common to both sides (``theory/finite_width.md`` section 7).

Costs: ``S`` runs of the kernel-space solver (each as one plain prediction) plus ``S``
empirical kernels; the data, the mixing, the draws ``z`` and the compiled solver steps
are shared.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ntkdyn._utils.types import ArrayLike, Rates, Steps
from ntkdyn.algorithms import Algorithm
from ntkdyn.data import Partition, check_partition
from ntkdyn.graphs.sequences import MixingProcess
from ntkdyn.models import MLP
from ntkdyn.trajectory import AGENT_METRICS, Trajectory

#: empirical kernels per finite-width band by default
DEFAULT_WIDTH_SAMPLES = 16
#: widths at which :func:`width_for` measures the spread by default
DEFAULT_WIDTHS = (128, 256, 512)
#: metrics :func:`width_for` can size a width for
WIDTH_FOR_METRICS = ("test_acc", "test_loss", "train_loss", "train_acc")

__all__ = ["DEFAULT_WIDTHS", "DEFAULT_WIDTH_SAMPLES", "WidthEstimate", "check_width_call",
           "empirical_nngp", "half_width", "network_params", "paired_sgd_draws",
           "sgd_width_words", "tol_unit", "width_arch", "width_draws", "width_draws_sweep",
           "width_for", "width_quantity", "with_width_band"]


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_width_call(arch: Any, *, width, samples, kernel: str = "analytic", f0: str = "random",
                     params: Any = None, mixing=None, other_path: bool = False) -> None:
    """``ValueError`` naming ``width`` (or ``width_samples``) for what the finite-width band
    does not take: an :class:`~ntkdyn.models.MLP` with hidden layers, the analytic kernel,
    ``f0`` ``"random"`` or ``"mean"``, full batch or mini-batch SGD (either loss), static or
    periodic mixing, the exact path."""
    from ntkdyn.graphs.sequences import is_process

    if not _is_int(width) or width < 1:
        raise ValueError(f"width: expected a positive integer (the hidden width n), got "
                         f"{width!r}")
    if not _is_int(samples) or samples < 2:
        raise ValueError(f"width_samples: expected an integer >= 2 (empirical kernels "
                         f"drawn), got {samples!r}")
    why = None
    if not isinstance(arch, MLP):
        why = f"the finite-width band needs an ntkdyn.models.MLP, got {type(arch).__name__}"
    elif not arch.hidden:
        why = "the MLP has no hidden layer (a linear model has no finite-width fluctuation)"
    elif kernel != "analytic":
        why = (f"the finite-width band is for the analytic kernel, got kernel={kernel!r} "
               "(the empirical kernel already is one network's)")
    elif params is not None or f0 == "network":
        why = "the finite-width band is over networks; params= / f0='network' is one network"
    elif f0 not in ("random", "zero", "mean"):
        why = f"f0 must be 'random' or 'mean', got {f0!r}"
    elif mixing is not None and is_process(mixing) and getattr(mixing, "random", False):
        why = "random mixing sequences are not combined with the finite-width band"
    elif other_path:
        why = "the finite-width band runs on the exact kernel path (rank=None, path='kernel')"
    if why is not None:
        raise ValueError(f"width: {why}")


def width_arch(arch: MLP, width: int) -> MLP:
    """``arch`` with every hidden layer of width ``width``."""
    return dataclasses.replace(arch, hidden=(int(width),) * arch.depth)


def network_params(arch: MLP, in_dim: int, seeds: Sequence[int]):
    """Yield, for each seed, :func:`ntkdyn.init_params` ``(arch, in_dim, seed)`` (one
    network alive at a time; eager draws: a ``jax.jit`` or ``jax.vmap`` of the draw costs
    more to compile per width than it saves at these sample counts, measured)."""
    from ntkdyn.models import init_params

    for s in seeds:
        yield init_params(arch, int(in_dim), int(s))


def empirical_nngp(arch: MLP, params, x: np.ndarray) -> np.ndarray:
    r"""Empirical NNGP of ``arch`` at ``params`` on ``x``:
    ``K = (W_std^2 / n_L) h_L(x) h_L(x)^T + b_std^2``, the covariance of each output over
    the readout weights and bias (``N(0, 1)``) given the hidden layers (``h_0 = x`` for a
    linear model)."""
    act = arch.act
    h = np.asarray(x, np.float64)
    for w, b in params[:-1]:
        w = np.asarray(w, np.float64)
        h = np.asarray(act(arch.W_std / np.sqrt(w.shape[0]) * (h @ w)
                           + arch.b_std * np.asarray(b, np.float64)), np.float64)
    return arch.W_std**2 / h.shape[1] * (h @ h.T) + arch.b_std**2


def width_draws(arch: MLP, parts: Partition, mixing, lr, algorithm, steps, *, width: int,
                samples: int = DEFAULT_WIDTH_SAMPLES, seed: int = 0, f0: str = "random",
                init_samples: int | None = None, continuous: bool = False,
                loss: str = "mse", logit_scale: float = 1.0, batch_size: int = 0,
                batch_sampling: str = "epoch") -> tuple[dict, dict]:
    """Per-agent metrics ``(S, T, Q)`` of the prediction with the empirical kernels of
    ``samples`` networks of width ``width`` (seeds ``seed .. seed + S - 1``), and facts
    about the run (``metadata["finite_width"]``).  Records after a sample diverged are
    NaN.  ``f0``: ``"random"`` (the mean over ``init_samples`` sampled initial outputs
    per kernel, the same standard-normal draws for every kernel) or ``"mean"``.

    ``batch_size > 0``: with the squared loss the draws run full batch (the expected SGD
    trajectory, module doc); with cross-entropy every kernel runs mini-batch SGD with
    the sampled batch sequences of the infinite-width prediction (``seed``;
    ``init_samples`` of them, network ``i`` from ``z_i`` on sequence ``i``, or with
    ``f0="mean"`` that many sequences from ``f_0 = 0``, default 64), the draw being the
    mean over them (``info["dynamics"]``; ``theory/finite_width.md`` section 7)."""
    return width_draws_sweep(arch, parts, mixing, [lr], algorithm, steps, width=width,
                             samples=samples, seed=seed, f0=f0, init_samples=init_samples,
                             continuous=continuous, loss=loss, logit_scale=logit_scale,
                             batch_size=batch_size, batch_sampling=batch_sampling)[0]


def width_draws_sweep(arch: MLP, parts: Partition, mixing, lrs: Sequence, algorithm, steps,
                      *, width: int, samples: int = DEFAULT_WIDTH_SAMPLES, seed: int = 0,
                      f0: str = "random", init_samples: int | None = None,
                      continuous: bool = False, loss: str = "mse",
                      logit_scale: float = 1.0, batch_size: int = 0,
                      batch_sampling: str = "epoch") -> list[tuple[dict, dict]]:
    """:func:`width_draws` for several learning rates: one ``(draws, info)`` per rate, every
    rate sharing each network's kernels and kernel reads (one batched run per network, as
    :func:`ntkdyn.predict_sweep`)."""
    from ntkdyn.dynamics import random_init
    from ntkdyn.dynamics.problem import make_problem
    from ntkdyn.dynamics.run import run_problem
    from ntkdyn.graphs.sequences import resolve_mixing
    from ntkdyn.kernels.empirical import mlp_empirical_ntk

    check_width_call(arch, width=width, samples=samples, f0=f0, mixing=mixing)
    check_partition(parts)
    lrs = list(lrs)
    parts = parts.sorted()
    data = parts.dataset
    n = data.num_train
    has_test = data.num_test > 0
    w, process = resolve_mixing(mixing, parts.num_agents)
    mixing = w if process is None else process
    net = width_arch(arch, width)
    random = f0 == "random"
    independent = loss != "mse"  # cross-entropy: K columns per network (random_init)
    count = ((random_init.DEFAULT_INDEPENDENT_NETWORKS if independent else
              random_init.DEFAULT_NETWORKS) if init_samples is None else init_samples)
    sgd = bool(batch_size) and loss != "mse"  # squared loss: full batch = expected SGD
    sgd_kw = dict(batch_size=int(batch_size), batch_sampling=batch_sampling,
                  samples=count if random else init_samples) if sgd else {}
    pooled = np.concatenate([data.x_train, data.x_test]) if has_test else data.x_train
    runs = []  # runs[s][r]: network s at rate r
    seeds = [int(seed) + s for s in range(samples)]
    for params in network_params(net, data.dim, seeds):
        kt = mlp_empirical_ntk(net, params, data.x_train)
        ktt = mlp_empirical_ntk(net, params, data.x_test, data.x_train) if has_test else None
        problem = make_problem(kt, data.y_train, parts.agent, mixing, kernel_test_train=ktt,
                               y_test=data.y_test if has_test else None, loss=loss,
                               logit_scale=logit_scale)
        init = None
        if random:  # same z for every kernel (same seed); no exact losses (not needed)
            init = dataclasses.replace(random_init.draw(
                empirical_nngp(net, params, pooled), n, count, seed,
                outputs=problem.num_outputs if independent else 1), nngp=None)
        runs.append(run_problem(problem, algorithm, lrs, steps, continuous=continuous,
                                reference=False, init=init, seed=seed,
                                metadata={"kernel": "empirical", "width": int(width)},
                                **sgd_kw))
    out = [_stack([r[i] for r in runs], samples, parts.num_agents, width, seeds, random,
                  count) for i in range(len(lrs))]
    if batch_size:
        words = sgd_width_words(loss, batch_sampling)
        extra = {"dynamics": words, "batch_size": int(batch_size),
                 "batch_sampling": batch_sampling}
        if sgd:
            extra["batch_sequences"] = int(runs[0][0].metadata["minibatch"]["samples"])
        out = [(d, dict(info, **extra)) for d, info in out]
    return out


def sgd_width_words(loss: str, batch_sampling: str = "epoch") -> str:
    """What the width draws of a mini-batch SGD prediction are, in words
    (``metadata["finite_width"]["dynamics"]``)."""
    if loss == "mse":
        return ("full batch: each width-n kernel's expected SGD trajectory (squared loss); "
                "the batch noise is in the init+batch band")
    return ("mini-batch SGD (cross-entropy, no exact expected trajectory): each width-n "
            "kernel runs the infinite-width prediction's sampled networks, network i from "
            "the same standard-normal draw z_i and on the same batch sequence i (same seed, "
            f"batch_sampling={batch_sampling!r}); each width draw is the mean over them, and "
            "width_draws['paired/<metric>'] are the infinite-width draws with those z_i and "
            "sequences, so the width shift is measured with init and batch noise common to "
            "both sides (theory/finite_width.md section 7)")


def _stack(runs: list, samples: int, agents: int, width: int, seeds: list, random: bool,
           count: int) -> tuple[dict, dict]:
    """``(draws, info)`` of one rate from its ``samples`` runs."""
    statuses = [t.status for t in runs]
    rows = max(len(t.steps) for t in runs)
    draws = {}
    for name in AGENT_METRICS:
        if getattr(runs[0], name, None) is None:
            continue
        stack = np.full((samples, rows, agents), np.nan)
        for i, t in enumerate(runs):
            v = getattr(t, name)
            stack[i, :len(v)] = v
        draws[name] = stack
    info = {"width": int(width), "samples": int(samples),
            "seeds": seeds,
            "f0": "random" if random else "mean",
            "init_samples": int(count) if random else 0,
            "nngp": "empirical (each network's last hidden layer)",
            "statuses": {st: statuses.count(st) for st in sorted(set(statuses))},
            "note": "width_draws / band(..., over='width'): the linearised prediction with "
                    "each width-n network's empirical NTK (and NNGP) at initialisation; "
                    "the kernel's motion during training is not in it "
                    "(theory/finite_width.md section 6)"}
    return draws, info


def paired_sgd_draws(traj: Trajectory, draws: dict, info: dict) -> dict:
    """``{"paired/<metric>": (P, T, Q)}`` for a cross-entropy mini-batch SGD prediction
    ``traj`` (``f0="random"``) whose width draws ``draws`` ran the same ``P`` standard-normal
    draws and batch sequences (``info``): ``traj.draws`` themselves, network ``i`` from
    ``z_i`` on sequence ``i``.  ``ValueError`` naming ``samples`` if the counts differ (the
    pairing would be broken)."""
    p = int(getattr(traj, "samples", 0) or 0)
    mb = traj.metadata.get("minibatch") or {}
    if p != info.get("init_samples") or mb.get("samples") != info.get("batch_sequences"):
        raise ValueError(f"samples: the width draws ran {info.get('init_samples')} networks "
                         f"on {info.get('batch_sequences')} batch sequences, the prediction "
                         f"{p} on {mb.get('samples')}: not paired")
    rows = len(traj.steps)
    return {f"paired/{k}": np.array(v, dtype=np.float64)
            for k, v in (getattr(traj, "draws", None) or {}).items()
            if k in draws and not k.startswith("paired/") and v.shape[1] == rows}


def with_width_band(traj: Trajectory, draws: dict, info: dict) -> Trajectory:
    """``traj`` with the finite-width draws and ``metadata["finite_width"]`` attached; the
    band over initialisations (``quantiles``) is left as it was."""
    rows = len(traj.steps)
    draws = {k: v[:, :rows] for k, v in draws.items()}
    return dataclasses.replace(traj, width_draws=draws,
                               metadata=dict(traj.metadata, finite_width=info))


def _normal_quantile(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def half_width(draws: np.ndarray, level: float = 0.9) -> np.ndarray:
    """Half-width of the central ``level`` band at the last record, per agent:
    ``z_{(1+level)/2} * sd`` over the samples (``draws`` ``(S, T, Q)``; the normal
    approximation, the kernel fluctuations being a mean over ``n`` neurons; smoother in
    ``n`` than empirical quantiles of a few samples)."""
    last = np.asarray(draws, dtype=float)[:, -1]
    return _normal_quantile((1 + level) / 2) * np.nanstd(last, axis=0, ddof=1)


@dataclass(frozen=True)
class WidthEstimate:
    """Result of :func:`width_for`.

    Attributes
    ----------
    width : int
        Smallest width ``n`` with ``constant / sqrt(n) <= tol``.
    constant : float
        ``c`` of the fitted law ``half_width(n) = c n^{-1/2}`` (slope fixed at ``-1/2``,
        least squares in log-log).
    slope : float
        Slope of a free log-log fit to the measured half-widths (a check of the law;
        ``nan`` with fewer than two positive spreads).
    widths, spreads : tuple
        Widths measured and the band's half-width at the horizon at each (worst agent).
    metric : str
    tol : float
    level : float
        Central band whose half-width is sized (0.9: 5-95 %).
    samples : int
        Empirical kernels per measured width.
    loss : str
        The trained loss of the width draws (``"mse"`` or ``"cross_entropy"``): with
        cross-entropy ``tol`` on ``test_loss`` / ``train_loss`` is in nats (the mean
        ``-log softmax(s f)_c`` at logit scale ``logit_scale``), with the squared loss in
        units of ``||f - y||^2 / 2``; on accuracies it is a fraction (:func:`tol_unit`, which
        :attr:`quantity` and the repr both name).
    logit_scale : float
        Cross-entropy logit scale ``s`` of the draws (1.0 for the squared loss).
    batch_size : int
        ``0``: full batch.  ``> 0``: mini-batch SGD; the band sized is that of the width
        draws (:func:`sgd_width_words`: the expected SGD trajectory of each kernel for the
        squared loss, the mean over the sampled batch sequences for cross-entropy), not
        the batch noise.
    """

    width: int
    constant: float
    slope: float
    widths: tuple[int, ...]
    spreads: tuple[float, ...]
    metric: str
    tol: float
    level: float
    samples: int
    loss: str = "mse"
    logit_scale: float = 1.0
    batch_size: int = 0

    @property
    def quantity(self) -> str:
        """What ``tol`` bounds, in words (``check``'s JSON ``width_for.quantity``)."""
        return width_quantity(self.metric, self.level, self.loss, self.logit_scale,
                              self.batch_size)

    @property
    def law_holds(self) -> bool:
        """Whether the free log-log slope is within 0.25 of ``-1/2`` (else the measured
        widths are not yet in the ``n^{-1/2}`` regime and ``width`` is not to be trusted:
        measure at larger ``widths``)."""
        return bool(np.isfinite(self.slope) and abs(self.slope + 0.5) <= 0.25)

    def __repr__(self) -> str:
        warn = "" if self.law_holds else (" [the free slope is not -1/2: these widths are "
                                          "not in the n^-1/2 regime; measure wider]")
        pts = ", ".join(f"{w}: {s:.3g}" for w, s in zip(self.widths, self.spreads,
                                                         strict=True))
        lo, hi = round(50 * (1 - self.level)), round(50 * (1 + self.level))
        unit = tol_unit(self.metric, self.loss, self.logit_scale)[0]
        how = (f", {self.loss}" if self.loss != "mse" else "") + \
            (f", batch size {self.batch_size}" if self.batch_size else "")
        return (f"WidthEstimate(width={self.width}: {self.metric}{how} {lo}-{hi} % "
                f"half-width <= {self.tol:g} {unit} at the horizon; fitted "
                f"{self.constant:.3g} / sqrt(n), "
                f"free slope {self.slope:.2f}; measured {{{pts}}} over {self.samples} "
                f"kernels each){warn}")


def tol_unit(metric: str, loss: str = "mse", logit_scale: float = 1.0) -> tuple[str, str]:
    """The unit of :func:`width_for`'s ``tol`` on ``metric``, as ``(name, meaning)``: the one
    statement of it, used by :func:`width_quantity` and :meth:`WidthEstimate.__repr__`.

    * cross-entropy loss: ``"nats"``, the mean ``-log softmax(s f)_c`` at logit scale
      ``s = logit_scale``;
    * squared loss: ``"squared-loss units"``, of ``||f - y||^2 / 2``;
    * accuracies: ``"fraction of samples"`` (either loss).
    """
    if not metric.endswith("loss"):
        return "fraction of samples", "the accuracy, a fraction of the samples classified"
    if loss == "cross_entropy":
        return "nats", f"mean cross-entropy -log softmax(s f)_c, s = {logit_scale:g}"
    return "squared-loss units", "of the squared loss ||f - y||^2 / 2"


def width_quantity(metric: str, level: float = 0.9, loss: str = "mse",
                   logit_scale: float = 1.0, batch_size: int = 0) -> str:
    """What :func:`width_for`'s ``tol`` bounds, in words: the central ``level`` band's
    half-width of ``metric`` at the horizon over width-``n`` kernels (worst agent), with its
    unit (nats for the cross-entropy losses) and the dynamics of the draws."""
    lo, hi = round(50 * (1 - level)), round(50 * (1 + level))
    name, meaning = tol_unit(metric, loss, logit_scale)
    unit = f"in {name} ({meaning})"
    trained = ("cross-entropy training" if loss == "cross_entropy" else
               "squared-loss training")
    dyn = (f"{trained}, full batch" if not batch_size else
           f"{trained}, mini-batch SGD, batch size {batch_size}: "
           + sgd_width_words(loss).split(":")[0]
           + "; the batch noise itself is not in this band")
    return (f"{lo}-{hi} % half-width of {metric} {unit} at the horizon, worst agent, over "
            f"width-n networks' empirical kernels at initialisation ({dyn}; the kernel's "
            "motion during training is not included)")


def _check_width_for_args(parts, metric, tol, widths, level, loss, logit_scale,
                          batch_size, batch_sampling) -> None:
    """``ValueError`` naming the first bad argument of :func:`width_for`."""
    from ntkdyn.losses import check_logit_scale, check_loss
    from ntkdyn.minibatch import check_batch_size, check_sampling

    if metric not in WIDTH_FOR_METRICS:
        raise ValueError(f"metric: expected one of {WIDTH_FOR_METRICS}, got {metric!r}")
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.floating) or \
            not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a finite number > 0, got {tol!r}")
    if isinstance(widths, str | bytes) or not isinstance(widths, Sequence) or \
            len(set(widths)) < 2 or not all(_is_int(w) and w >= 1 for w in widths):
        raise ValueError(f"widths: expected at least two distinct positive integers, got "
                         f"{widths!r}")
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), e.g. 0.9 for 5-95 %, got "
                         f"{level!r}")
    check_loss(loss)
    check_logit_scale(logit_scale)
    check_sampling(batch_sampling)
    check_partition(parts)
    check_batch_size(batch_size, parts.counts)
    if metric.startswith("test") and parts.dataset.num_test == 0:
        raise ValueError(f"metric: {metric!r} needs test data; the data set has none")


def width_for(arch: MLP, parts: Partition, mixing: ArrayLike | MixingProcess, *,
              lr: Rates, steps: Steps, algorithm: str | Algorithm = "dgd",
              metric: str = "test_acc", tol: float = 0.01,
              widths: Sequence[int] = DEFAULT_WIDTHS, samples: int = DEFAULT_WIDTH_SAMPLES,
              level: float = 0.9, seed: int = 0, f0: str = "random",
              init_samples: int | None = None, max_width: int = 2**24,
              loss: str = "mse", logit_scale: float = 1.0, batch_size: int = 0,
              batch_sampling: str = "epoch") -> WidthEstimate:
    r"""How wide is wide enough: the smallest hidden width whose finite-width band of
    ``metric`` at the horizon (last of ``steps``) has half-width ``<= tol``.

    At each of ``widths`` the band is measured over ``samples`` empirical kernels
    (:func:`width_draws` with the same ``loss``, ``logit_scale``, ``batch_size`` and
    ``batch_sampling``; half-width :func:`half_width`, worst agent); the law
    ``h(n) = c n^{-1/2}`` is fitted with the slope fixed, ``log c = mean(log h_i +
    (1/2) log n_i)``, and ``width = ceil((c / tol)^2)`` (at least 1; ``ValueError`` above
    ``max_width``).  A free slope is reported as a check.  The band is the spread of the
    linearised prediction over kernels at initialisation (``theory/finite_width.md``
    section 6), not the whole distance to a trained network.

    What ``tol`` is on (:attr:`WidthEstimate.quantity`): with ``loss="cross_entropy"`` a
    tolerance on ``test_loss`` / ``train_loss`` is in nats, the band of the mean
    cross-entropy ``-log softmax(s f)_c`` (``s = logit_scale``) of the linearised
    cross-entropy dynamics; on accuracies it is a fraction of samples.  With
    ``batch_size > 0`` the sized band is the width draws' (squared loss: each kernel's
    expected SGD trajectory, i.e. full batch; cross-entropy: each kernel's mean over the
    prediction's sampled batch sequences, ``init_samples`` of them;
    ``theory/finite_width.md`` section 7), not the spread over batch sequences.

    Examples
    --------
    >>> est = nd.width_for(arch, parts, W, lr=0.4, steps=200, metric="test_loss",
    ...                    tol=0.005)                                   # doctest: +SKIP
    >>> est = nd.width_for(arch, parts, W, lr=0.5, steps=200, metric="test_loss",
    ...                    tol=0.01, loss="cross_entropy", logit_scale=1.0,
    ...                    batch_size=8)                                # doctest: +SKIP
    >>> est.width, est.constant, est.quantity                           # doctest: +SKIP
    """
    if isinstance(widths, np.ndarray):
        widths = widths.tolist()
    if not _is_int(samples) or samples < 2:
        raise ValueError(f"samples: expected an integer >= 2 (empirical kernels per width), "
                         f"got {samples!r}")
    if not _is_int(max_width) or max_width < 1:
        raise ValueError(f"max_width: expected a positive integer, got {max_width!r}")
    _check_width_for_args(parts, metric, tol, widths, level, loss, logit_scale, batch_size,
                          batch_sampling)
    widths = tuple(sorted(int(w) for w in set(widths)))
    spreads, bad = [], []
    for n in widths:
        draws, info = width_draws(arch, parts, mixing, lr, algorithm, steps, width=n,
                                  samples=samples, seed=seed, f0=f0,
                                  init_samples=init_samples, loss=loss,
                                  logit_scale=logit_scale, batch_size=batch_size,
                                  batch_sampling=batch_sampling)
        off = samples - info["statuses"].get("ok", 0)
        if off:
            bad.append(f"{off} of {samples} kernels at width {n}")
        spreads.append(float(np.max(half_width(draws[metric], level))))
    if bad:
        raise ValueError(f"lr: the linearised dynamics are unstable (or diverged) for "
                         f"{', '.join(bad)}: the finite-width kernels' largest stable rate "
                         "fluctuates around the analytic one; use a smaller lr or larger "
                         "widths")
    logn, spr = np.log(np.asarray(widths, float)), np.asarray(spreads)
    pos = spr > 0
    if not pos.all():
        zero = [n for n, p in zip(widths, pos, strict=True) if not p]
        warnings.warn(f"width_for: the {metric} band has zero half-width at width(s) {zero} "
                      f"(its {samples} samples agree there: a discrete metric such as an "
                      "accuracy, or too few samples); the fit of c / sqrt(n) uses the other "
                      "widths only, so the width returned can be far above one that already "
                      "met tol: see WidthEstimate.spreads, or use more samples",
                      UserWarning, stacklevel=2)
    if not pos.any():
        constant, slope = 0.0, float("nan")
    else:
        constant = float(np.exp(np.mean(np.log(spr[pos]) + 0.5 * logn[pos])))
        slope = float(np.polyfit(logn[pos], np.log(spr[pos]), 1)[0]) if pos.sum() >= 2 \
            else float("nan")
    width = max(1, math.ceil((constant / tol) ** 2 * (1 - 1e-12)))
    if width > max_width:
        raise ValueError(f"tol: the fitted law {constant:.3g} / sqrt(n) reaches {tol:g} only "
                         f"at width {width} > max_width = {max_width}")
    return WidthEstimate(width=width, constant=constant, slope=slope, widths=widths,
                         spreads=tuple(spreads), metric=metric, tol=float(tol),
                         level=float(level), samples=int(samples), loss=loss,
                         logit_scale=float(logit_scale) if loss != "mse" else 1.0,
                         batch_size=int(batch_size))
