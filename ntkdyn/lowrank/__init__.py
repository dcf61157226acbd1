r"""The low-rank path: predictions at data-set scale with a stated error (issue 17).

``Theta ~ Phi Phi^T`` of rank ``r`` from kernel *column blocks* (never N x N;
:mod:`ntkdyn.lowrank.factor`), then every schedule of :mod:`ntkdyn.algorithms` on the
``r`` feature coordinates (:mod:`ntkdyn.lowrank.evolve`): O(N r K) per step, O(N r)
memory.  Theory, error estimate and measured accuracy: ``theory/low_rank.md``.

Entry point (what ``nd.predict(rank=...)`` is meant to call)::

    source = lowrank.analytic_columns(x_train, x_test, hidden_layers=2)
    traj = lowrank.predict(source, y_train, agent, W, lr=0.5, steps=range(0, 1001, 20),
                           y_test=y_test, rank="auto", tol=1e-3)
    traj.metadata["low_rank"]   # rank, method, error_estimate, error_estimate_test, ...

Column sources: :func:`analytic_columns` (infinite-width NTK of an MLP),
:func:`empirical_columns` (the empirical NTK of a given MLP, layerwise formula),
:func:`jacobian_columns` (the empirical NTK of any ``apply_fn``, Jacobian-vector
products), :func:`kernel_columns` (kernels in memory); ``nd.predict(kernel=..., rank=...)``
picks one (:func:`ntkdyn.prediction.lowrank_source`).

One random network (:mod:`ntkdyn.lowrank.networks`, ``predict(..., nngp=...)`` or
``init=...``; the default of ``nd.predict(rank=...)`` with the analytic kernel): ``f_0``
drawn from a low-rank NNGP factor on ``[train; test]`` plus the residual diagonal (every
marginal variance exact), run as ``K + P`` columns.

Softmax cross-entropy (:mod:`ntkdyn.lowrank.cross_entropy`, ``predict(...,
loss="cross_entropy")``): the same schedules in feature form with the gradient
``Phi_q^T s (softmax(s f_q) - Y_q) / N_q``; an integer rank, no error estimate; one random
network as ``P + 1`` groups of ``K`` columns (each network its own ``f_0`` draws).

The primal path (:mod:`ntkdyn.lowrank.primal`, ``nd.predict(..., path="primal")``): the
linearised finite network in parameter space, exact, ``O(N K P)`` per step.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import partial

import numpy as np

from ntkdyn._utils.checks import agent_indices, learning_rates, steps_array
from ntkdyn.algorithms import Algorithm, get_algorithm
from ntkdyn.lowrank.evolve import (
    HeldOutEstimate,
    ProbeEstimate,
    check_lrs,
    error_estimate,
    error_scale,
    evolve_bytes,
    held_out_estimator,
    held_out_trajectory_estimate,
    mean_rates,
    output_estimates,
    predict_lowrank,
    predict_lowrank_sweep,
    probe_estimator,
    trajectory_estimate,
)
from ntkdyn.lowrank.factor import (
    METHODS,
    AnalyticColumns,
    EmpiricalColumns,
    JacobianColumns,
    KernelColumns,
    LowRankFactor,
    LowRankTooLargeError,
    MatrixColumns,
    check_max_rank,
    check_rank,
    check_tol,
    factor_bytes,
    factorize,
    max_fitting_rank,
    probe_count,
)
from ntkdyn.lowrank.primal import jacobian_features, predict_primal, primal_bytes
from ntkdyn.lowrank.stability import FeatureProblem, lowrank_stability, lowrank_stable_set
from ntkdyn.lowrank.steady_state import lowrank_fixed_point
from ntkdyn.trajectory import Trajectory

__all__ = [
    "METHODS", "AnalyticColumns", "EmpiricalColumns", "JacobianColumns", "KernelColumns",
    "LowRankFactor", "ProbeEstimate", "HeldOutEstimate", "held_out_estimator",
    "held_out_trajectory_estimate", "governing_estimate",
    "LowRankTooLargeError", "MatrixColumns", "analytic_columns", "choose_factor",
    "empirical_columns", "error_estimate", "error_scale", "evolve_bytes",
    "factor_bytes", "factorize", "jacobian_columns", "jacobian_features", "kernel_columns",
    "max_fitting_rank", "mean_rates", "output_estimates", "probe_count", "probe_estimator",
    "trajectory_estimate",
    "FeatureProblem", "lowrank_fixed_point", "lowrank_stability", "lowrank_stable_set",
    "predict",
    "predict_lowrank", "predict_lowrank_sweep", "predict_primal",
    "predict_sweep", "primal_bytes", "tol_shortfall",
]

DEFAULT_TOL = 1e-3


def kernel_columns(kernel_train, kernel_test_train=None) -> MatrixColumns:
    """Column source for traced kernels already in memory."""
    return MatrixColumns(kernel_train, kernel_test_train)


def analytic_columns(x_train, x_test=None, *, hidden_layers: int, activation="relu",
                     W_std: float = 1.4, b_std: float = 0.1,
                     kernel: str = "ntk") -> AnalyticColumns:
    """Column source for the infinite-width NTK (``kernel="ntk"``) or NNGP (``"nngp"``) of
    an MLP (closed-form recursion)."""
    return AnalyticColumns(x_train, x_test, hidden_layers=hidden_layers, activation=activation,
                           W_std=W_std, b_std=b_std, kernel=kernel)


def empirical_columns(model, params, x_train, x_test=None, *,
                      batch_size: int | None = None) -> EmpiricalColumns:
    """Column source for the traced empirical NTK of an ``nd.models.MLP`` with ``params``
    (layerwise, no Jacobian; see :class:`EmpiricalColumns`)."""
    return EmpiricalColumns(model, params, x_train, x_test, batch_size)


def jacobian_columns(apply_fn, params, x_train, x_test=None, *,
                     row_batch: int = 256) -> JacobianColumns:
    """Column source for the traced empirical NTK of any ``apply_fn(params, x) -> (B, K)``
    (Jacobian-vector products in bounded blocks; see :class:`JacobianColumns`)."""
    if not callable(apply_fn):
        raise ValueError(f"apply_fn: expected a callable, got {type(apply_fn).__name__}")
    if isinstance(row_batch, bool) or not isinstance(row_batch, int) or row_batch < 1:
        raise ValueError(f"row_batch: expected a positive int, got {row_batch!r}")
    return JacobianColumns(apply_fn, params, x_train, x_test, row_batch)


def _reserve_per_rank(n: int, n_test: int, agents: int, counts: np.ndarray) -> int:
    """Bytes per coordinate the evolution needs besides the factor (padded rows, test)."""
    rows = max(n, agents * int(counts.max())) if len(counts) else n
    return 8 * (rows + n_test)


def predict(
    source: KernelColumns,
    y_train,
    agent,
    mixing,
    lr,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    rank: int | str = "auto",
    tol: float | None = None,
    method: str = "rpcholesky",
    max_rank: int | None = None,
    block: int = 128,
    seed: int = 0,
    nngp: KernelColumns | None = None,
    init=None,
    samples: int | None = None,
    nngp_rank: int | None = None,
    **kwargs,
) -> Trajectory:
    r"""Factor the kernel of ``source`` and predict on the factor.

    **One random network** (:mod:`ntkdyn.lowrank.networks`): with ``nngp``, a column
    source of the NNGP on the pooled ``[train; test]`` inputs (e.g.
    ``AnalyticColumns(np.concatenate([x, x_test]), kernel="nngp", ...)``), ``samples``
    (default 32) initial outputs are drawn from its rank-``nngp_rank`` factor (default: the
    NTK factor's rank) plus the residual diagonal -- every marginal variance exact, the
    correlations of the discarded NNGP spectrum not -- and run as ``K + P`` columns; or
    give the draws themselves, ``init`` (:class:`ntkdyn.dynamics.random_init.InitDraws`,
    caller's order).  The result is a :class:`~ntkdyn.trajectory.RandomNetworkTrajectory`
    (expected losses, ``band(..., over="init")``, ``.mean_network``);
    ``metadata["low_rank"]["f0_draws"]`` says what the draws are.  With a periodic mixing
    sequence the ``K + P`` columns share it; with a random one (``random_edges``,
    ``one_random_edge``) the networks are independent, as on the exact path: ``samples``
    (default 16) networks of ``K`` draw columns each, network ``s`` on sampled sequence
    ``s`` (:func:`ntkdyn.lowrank.gossip.predict_random_lowrank_gossip`; ``init`` with
    ``outputs=K``), ``.mean_network`` a :class:`~ntkdyn.trajectory.GossipTrajectory` and
    ``.init_band_run`` the ``E[W]`` runs.

    ``rank``: an integer ``1..N``, or ``"auto"``: the fewest coordinates whose a-priori
    error estimate (``theory/low_rank.md``) ``error_scale(lr, N_q, T, algorithm) *
    ||Theta - Phi Phi^T||``-bound is ``<= tol`` (default ``1e-3``), read from landmark
    columns until the Nystrom residual trace is ``<= tol / (2 scale)`` -- capped by
    ``max_rank`` and by the memory available.  When the cap stops it first, the
    trajectory is computed at the cap, ``metadata["low_rank"]["tol_reached"]`` is
    ``False``, ``metadata["low_rank"]`` gets :func:`tol_shortfall`'s
    ``error_estimate_uncapped``, ``rank_needed_low`` and ``rank_needed_high``, and a
    ``RuntimeWarning`` naming ``tol`` says what estimate was reached and about what rank
    ``tol`` would need.  With ``y_test`` (a test set) ``tol`` bounds the larger of the
    training and test-output estimates (``error_estimate``, ``error_estimate_test``;
    ``theory/low_rank.md`` section 3.1), for the rank chosen and for ``tol_reached``.
    Other keywords go to :func:`predict_lowrank` (``y_test``,
    ``f0_train``, ``reference``, ``acc_rows``...).

    ``loss="cross_entropy"`` (with ``logit_scale``, one-hot or integer-label targets):
    softmax cross-entropy on the factor (:mod:`ntkdyn.lowrank.cross_entropy`): an integer
    ``rank``, no ``tol`` (``metadata["low_rank"]["error_estimate"]`` is ``None``: the
    estimate bounds the squared loss only), the mean network, a given ``f0_train`` or one
    random network (``nngp`` / ``init``: ``samples`` networks, default 16, ``K`` draw
    columns each, run as ``P + 1`` groups of ``K`` columns;
    :func:`ntkdyn.lowrank.cross_entropy.predict_random_lowrank_ce`); any mixing (random
    gossip: ``samples`` sequences and the ``E[W]`` run as column groups,
    :func:`ntkdyn.lowrank.cross_entropy.predict_lowrank_ce_gossip`; one random network:
    network ``s`` on sequence ``s``, ``2 P + 1`` groups).

    Raises ``ValueError`` naming ``rank``, ``tol``, ``max_rank`` or ``method`` for bad
    values, and :class:`LowRankTooLargeError` (a ``ValueError`` and a ``MemoryError``)
    when even the factor would not fit, with the rank that would.
    """
    factor, tol, algo, st, draws = _factor_and_draws(
        source, y_train, agent, mixing, lr, steps, algorithm, None, rank=rank, tol=tol,
        method=method, max_rank=max_rank, block=block, seed=seed, nngp=nngp, init=init,
        samples=samples, nngp_rank=nngp_rank, kwargs=kwargs)
    traj = _run_on_factor(factor, draws, y_train, agent, mixing, lr, st, algo, seed=seed,
                          samples=samples, **kwargs)
    return _finish(traj, factor, source.n, rank=rank, tol=tol, max_rank=max_rank)


def predict_sweep(
    source: KernelColumns,
    y_train,
    agent,
    mixing,
    lrs,
    steps,
    algorithm: str | Algorithm = "dgd",
    *,
    rank: int | str = "auto",
    tol: float | None = None,
    method: str = "rpcholesky",
    max_rank: int | None = None,
    block: int = 128,
    seed: int = 0,
    nngp: KernelColumns | None = None,
    init=None,
    samples: int | None = None,
    nngp_rank: int | None = None,
    **kwargs,
) -> list[Trajectory]:
    r""":func:`predict` at several learning rates on **one** factor (and, for one random
    network, one set of ``f_0`` draws): the factor is read once, then each rate of ``lrs``
    (a scalar or one rate per agent each) runs on it, and trajectory ``i`` equals
    ``predict(..., lr=lrs[i], rank=factor.rank)`` -- with the same draws -- to round-off.

    ``rank="auto"`` holds ``tol`` against the **maximum over the rates**: the landmarks
    are read once, and the rank is the fewest whose estimate ``max_i est_i(r)`` (each rate's
    probe-row estimate, training and test, or the trace rule at the largest
    ``error_scale``) is ``<= tol`` -- the largest of the ranks :func:`predict` would choose
    at each rate alone (same landmarks, estimates falling with the rank).  Not simply the
    largest rate: for scalar rates the estimate grows with the rate, but with per-agent
    rates it also grows with their spread (measured at N = 60: ``[0.2, 0.5, 0.1, 0.1]``
    needs rank 54 where the elementwise larger ``[0.3, 0.5, 0.3, 0.3]`` needs 51).  Each
    trajectory's ``metadata["low_rank"]`` carries its own rate's ``error_estimate`` (and
    ``error_estimate_test``) and ``tol_reached``.  The mean network (or a given
    ``f0_train``) with a static ``W`` and the squared loss runs every rate in one pass
    (:func:`predict_lowrank_sweep`); otherwise each rate is its own run on the factor."""
    check_lrs(lrs)
    factor, tol, algo, st, draws = _factor_and_draws(
        source, y_train, agent, mixing, lrs[0], steps, algorithm, lrs, rank=rank, tol=tol,
        method=method, max_rank=max_rank, block=block, seed=seed, nngp=nngp, init=init,
        samples=samples, nngp_rank=nngp_rank, kwargs=kwargs)
    from ntkdyn.graphs.sequences import is_process

    if draws is None and not is_process(mixing) and kwargs.get("loss", "mse") == "mse":
        # one run, the rates as column groups (each step reads the factor once for all)
        trajs = predict_lowrank_sweep(factor, y_train, agent, mixing, lrs, st, algo,
                                      seed=seed, **{k: v for k, v in kwargs.items()
                                                    if k != "loss"})
    else:
        trajs = [_run_on_factor(factor, draws, y_train, agent, mixing, lr, st, algo,
                                seed=seed, samples=samples, **kwargs) for lr in lrs]
    return [_finish(t, factor, source.n, rank=rank, tol=tol, max_rank=max_rank)
            for t in trajs]


def _factor_and_draws(source, y_train, agent, mixing, lr, steps, algorithm, lrs, *, rank, tol,
                      method, max_rank, block, seed, nngp, init, samples, nngp_rank, kwargs):
    """``(factor, tol, algorithm, steps, draws)`` shared by :func:`predict` and
    :func:`predict_sweep`: :func:`choose_factor` (at ``lr``, or at every rate of ``lrs``),
    then, for one random network, :func:`_random_draws` (``None`` for the mean network)."""
    _check_loss(kwargs, rank=rank, tol=tol)
    # one random network: the NNGP factor on N + M rows (2 r landmarks, F and its rotated
    # copy, nngp_rank = r by default) and P more state columns, reserved per coordinate
    extra = 0 if nngp is None else 8 * 4 * (source.n + source.n_test)
    factor, tol, algo, st = choose_factor(source, agent, mixing, lr, steps, algorithm,
                                          rank=rank, tol=tol, method=method,
                                          max_rank=max_rank, block=block, seed=seed,
                                          reserve_extra=extra, y_train=y_train,
                                          f0_train=kwargs.get("f0_train"),
                                          y_test=kwargs.get("y_test"),
                                          f0_test=kwargs.get("f0_test"), lrs=lrs)
    draws = None
    if nngp is not None or init is not None:
        draws = _random_draws(factor, source, y_train, mixing, seed=seed, nngp=nngp,
                              init=init, samples=samples, nngp_rank=nngp_rank, block=block,
                              method=method, kwargs=kwargs)
    return factor, tol, algo, st, draws


def _run_on_factor(factor, draws, y_train, agent, mixing, lr, st, algo, *, seed,
                   samples=None, **kwargs):
    """One rate on a chosen factor: :func:`predict_lowrank`; with cross-entropy
    :func:`ntkdyn.lowrank.cross_entropy.predict_lowrank_ce`; with a mixing process
    :func:`ntkdyn.lowrank.gossip.predict_lowrank_process` (``samples``: sampled sequences
    of a random one); or with ``draws`` (a pair ``(InitDraws, info)`` of
    :func:`_random_draws`) one random network (static mixing or a periodic sequence:
    shared cyclic columns; a random sequence: independent networks,
    :func:`ntkdyn.lowrank.gossip.predict_random_lowrank_gossip`)."""
    from ntkdyn.graphs.sequences import is_process

    if kwargs.get("loss", "mse") == "cross_entropy":  # (W static or periodic: checked)
        from ntkdyn.lowrank import cross_entropy

        kwargs = {k: v for k, v in kwargs.items() if k not in ("loss", "acc_rows", "form")}
        if not (is_process(mixing) and mixing.random):
            samples = None  # sampled networks (draws), not sequences
        if draws is None:
            return cross_entropy.predict_lowrank_ce(factor, y_train, agent, mixing, lr, st,
                                                    algo, samples=samples, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("f0_train", "f0_test")}
        return cross_entropy.predict_random_lowrank_ce(factor, draws[0], y_train, agent,
                                                       mixing, lr, st, algo, samples=samples,
                                                       draws_info=draws[1], **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k != "loss"}
    if is_process(mixing) and draws is None:
        from ntkdyn.lowrank.gossip import predict_lowrank_process

        return predict_lowrank_process(factor, y_train, agent, mixing, lr, st, algo,
                                       seed=seed, samples=samples, **kwargs)
    if draws is None:
        return predict_lowrank(factor, y_train, agent, mixing, lr, st, algo, seed=seed,
                               **kwargs)
    from ntkdyn.lowrank import networks

    kwargs = {k: v for k, v in kwargs.items() if k not in ("f0_train", "f0_test")}
    if is_process(mixing) and mixing.random:  # independent networks, s on sequence s
        from ntkdyn.lowrank.gossip import predict_random_lowrank_gossip

        return predict_random_lowrank_gossip(factor, draws[0], y_train, agent, mixing, lr, st,
                                             algo, seed=seed, samples=samples,
                                             draws_info=draws[1], **kwargs)
    return networks.predict_random_lowrank(factor, draws[0], y_train, agent, mixing, lr, st,
                                           algo, seed=seed, draws_info=draws[1], **kwargs)


def _check_loss(kwargs: dict, *, rank, tol) -> None:
    """``loss`` (``"mse"``, the default, or ``"cross_entropy"``, :mod:`ntkdyn.lowrank.
    cross_entropy`) and ``logit_scale`` (cross-entropy only) among the keywords of
    :func:`predict`; what cross-entropy does not take is a ``ValueError`` naming it."""
    from ntkdyn.losses import check_loss

    loss = check_loss(kwargs.get("loss", "mse"))
    if loss == "mse":
        if "logit_scale" in kwargs:
            raise ValueError("logit_scale: only used with loss='cross_entropy'")
        return
    from ntkdyn.lowrank.cross_entropy import check_call

    check_call(rank=rank, tol=tol, acc_rows=kwargs.get("acc_rows"),
               form=kwargs.get("form", "auto"))


def _finish(traj, factor, n: int, *, rank, tol, max_rank):
    """``metadata["low_rank"]``'s ``requested_rank``, ``tol`` and ``tol_reached`` (with
    :func:`tol_shortfall` and a ``RuntimeWarning`` when ``tol`` is missed)."""
    low = traj.metadata["low_rank"]
    low.update(requested_rank=rank, tol=tol)
    if tol is not None:  # tol bounds both estimates (theory/low_rank.md section 3.1)
        low["tol_reached"] = bool(governing_estimate(low) <= tol)
        if not low["tol_reached"]:
            low.update(tol_shortfall(low, n, tol))
            cause = (f"max_rank={max_rank}" if max_rank is not None and factor.rank >= max_rank
                     else "memory or the rank given")
            warnings.warn(_shortfall_message(low, n, tol, cause), RuntimeWarning,
                          stacklevel=3)
    return traj


def governing_estimate(low: dict) -> float:
    """What ``tol`` is held against: ``max(error_estimate, error_estimate_test)`` (the
    latter when the prediction has a test set and the factor test probe columns)."""
    test = low.get("error_estimate_test")
    return float(max(low["error_estimate"], 0.0 if test is None else test))


def _random_draws(factor, source, y_train, mixing, *, seed, nngp, init, samples, nngp_rank,
                  block, method, kwargs):
    """One random network's ``(InitDraws, draws_info)`` for :func:`predict`: the given
    ``init``, or ``samples`` draws from the NNGP factor of ``nngp`` (memory checked first,
    for the draws and the ``K + P``-column run)."""
    from ntkdyn._utils import memory
    from ntkdyn.dynamics.random_init import DEFAULT_INDEPENDENT_NETWORKS, DEFAULT_NETWORKS
    from ntkdyn.graphs.sequences import is_process
    from ntkdyn.lowrank import networks

    if kwargs.get("f0_train") is not None or kwargs.get("f0_test") is not None:
        raise ValueError("f0_train: one random network draws its f0; it cannot be combined "
                         "with f0_train / f0_test")
    n, m = source.n, source.n_test
    if init is not None:
        return init, {"source": "given"}
    if nngp.n != n + m:
        raise ValueError(f"nngp: expected a column source on the {n + m} pooled training "
                         f"and test inputs, got {nngp.n} rows")
    # a random sequence: independent networks of K draw columns each (network s on
    # sequence s, 3 P + 1 groups of K columns; lowrank.gossip), else shared cyclic columns
    independent = is_process(mixing) and mixing.random
    p = (DEFAULT_INDEPENDENT_NETWORKS if independent else DEFAULT_NETWORKS) \
        if samples is None else samples
    s_rank = min(n + m, factor.rank if nngp_rank is None
                 else check_rank(nngp_rank, n + m, name="nngp_rank"))
    q = mixing.num_agents if is_process(mixing) else np.shape(mixing)[0]
    if kwargs.get("loss", "mse") == "cross_entropy":
        return _ce_draws(nngp, n, m, q, factor.rank, y_train, seed=seed,
                         samples=samples, s_rank=s_rank, block=block, method=method)
    k = np.shape(y_train)[1]
    draw_cols = p * k if independent else p
    need = networks.networks_bytes(n, m, factor.rank, q, k, draw_cols,
                                   acc_rows=kwargs.get("acc_rows"), nngp_rank=s_rank) + \
        evolve_bytes(n, m, factor.rank, q, (3 * p + 1) * k if independent else k + p,
                     acc_rows=kwargs.get("acc_rows"))
    memory.ensure_fits(need, f"one random network on the low-rank path ({p} networks, NNGP "
                       f"factor of rank {s_rank})",
                       "use f0='mean', fewer samples, a smaller rank or nngp_rank")
    draws, info = networks.nngp_draws(nngp, n, draw_cols, seed, rank=s_rank, method=method,
                                      block=block)
    return (dataclasses.replace(draws, outputs=k), info) if independent else (draws, info)


def _ce_draws(nngp, n: int, m: int, agents: int, rank: int, y_train, *, seed, samples,
              s_rank: int, block: int, method: str):
    """One random network's draws with cross-entropy: ``samples`` networks (default
    :data:`~ntkdyn.dynamics.random_init.DEFAULT_INDEPENDENT_NETWORKS`, as the exact path),
    ``K`` columns each (``P K`` draws of :func:`ntkdyn.lowrank.networks.nngp_draws`, the
    same seed; ``InitDraws.outputs = K``); memory checked first (the NNGP factor, the draws
    and the ``(P + 1) K``-column run, :func:`ntkdyn.lowrank.cross_entropy.ce_bytes`)."""
    import dataclasses

    from ntkdyn._utils import memory
    from ntkdyn.dynamics.random_init import DEFAULT_INDEPENDENT_NETWORKS
    from ntkdyn.lowrank import networks
    from ntkdyn.lowrank.cross_entropy import ce_bytes

    p = DEFAULT_INDEPENDENT_NETWORKS if samples is None else samples
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1:
        raise ValueError(f"samples: expected an integer >= 1, got {p!r}")
    k = np.shape(y_train)[1] if np.ndim(y_train) == 2 else int(np.max(y_train)) + 1
    need = factor_bytes(n + m, 0, min(n + m, 2 * s_rank)) + 8 * 2 * (n + m) * p * k + \
        ce_bytes(n, m, rank, agents, (p + 1) * k, padded_rows=n)
    memory.ensure_fits(need, f"one random network with cross-entropy on the low-rank path "
                       f"({p} networks, NNGP factor of rank {s_rank})",
                       "use f0='mean', fewer samples, a smaller rank or nngp_rank")
    draws, info = networks.nngp_draws(nngp, n, int(p) * k, seed, rank=s_rank, method=method,
                                      block=block)
    return dataclasses.replace(draws, outputs=k), info


def tol_shortfall(low: dict, n: int, tol: float) -> dict:
    r"""What ``tol`` would take when the rank ``r`` reached does not meet it, from the
    ``metadata["low_rank"]`` of that run: ``error_estimate_uncapped``, the estimate before
    its cap of 2 (``error_scale * discarded_norm_bound``: the smallest ``tol`` this rank
    meets), and a range ``rank_needed_low .. rank_needed_high`` for the rank at which the
    residual trace ``t`` (after ``m`` landmarks) would fall to ``tol / (2 scale)``, where
    ``rank="auto"`` stops reading landmarks:

    .. math::  R_{low} = r + \lceil (t - \text{tol}/(2\,\text{scale})) / S_{r+1} \rceil,
               \qquad R_{high} = N - (N - m) \frac{\text{tol} / (2\,\text{scale})}{t}.

    ``R_low``: each further coordinate removes at most about ``S_{r+1}`` (the largest
    discarded eigenvalue) of the trace.  ``R_high``: the ``N - m`` directions not read share
    ``t`` equally (a flat tail); a decaying tail needs fewer.  Both are clipped to
    ``r + 1 .. N``.  On the flat bulk of an NTK both are near ``N``: then ``tol`` is out of
    reach of any rank below ``N`` and the exact path is the cheaper one.

    With the probe-row estimate (``error_estimate_kind == "probe rows"``, the default when
    the factor has probe columns) ``rank="auto"`` stops on that estimate instead, which the
    trace rule implies but not conversely, so ``R_low`` is only ``r + 1`` (measured: the
    rank picked fell below the trace rule's ``R_low``); ``R_high`` still holds, since a
    residual trace ``<= tol / (2 scale)`` meets the probe-row criterion too."""
    scale, resid = float(low["error_scale"]), float(low["residual_trace"])
    r, m = int(low["rank"]), int(low["landmarks"])
    half = tol / (2 * scale) if scale > 0 else np.inf
    nxt = float(low["next_eigenvalue"])
    hi = n if m >= n or resid <= 0 else n - (n - m) * min(1.0, half / resid)
    lo = r + (np.ceil(max(resid - half, 0.0) / nxt) if nxt > 0 else 1)
    if low.get("error_estimate_kind") == "probe rows":
        lo = r + 1
    lo, hi = (int(min(n, max(r + 1, np.ceil(v)))) for v in (lo, hi))
    uncapped = low.get("error_estimate_uncapped", scale * float(low["discarded_norm_bound"]))
    return {"error_estimate_uncapped": float(uncapped),
            "rank_needed_low": min(lo, hi), "rank_needed_high": hi}


def _shortfall_message(low: dict, n: int, tol: float, cause: str) -> str:
    """The ``RuntimeWarning`` of :func:`predict` when ``tol`` is not reached."""
    lo, hi = low["rank_needed_low"], low["rank_needed_high"]
    where = (" -- close to N, where the exact path (rank=None) is cheaper"
             if lo >= 0.5 * n else "")
    return (f"low-rank path: tol={tol:g} not reached: the a-priori error estimate at rank "
            f"{low['rank']} (capped by {cause}) is {low['error_estimate']:.3g} (before its "
            f"cap of 2: {low['error_estimate_uncapped']:.3g}) > tol; meeting tol would need "
            f"about rank {lo} to {hi} of N = {n} (residual trace "
            f"{low['residual_trace']:.3g}, largest discarded eigenvalue "
            f"{low['next_eigenvalue']:.3g}){where}{_test_part(low)}.  Raise max_rank or tol, "
            "or compare with "
            "the exact path on a subset: the measured error may be much smaller")


def _test_part(low: dict) -> str:
    test = low.get("error_estimate_test")
    if test is None:
        return ""
    return f"; the test-output estimate (also held against tol) is {test:.3g}"


def choose_factor(source: KernelColumns, agent, mixing, lr, steps,
                  algorithm: str | Algorithm = "dgd", *, rank: int | str = "auto",
                  tol: float | None = None, method: str = "rpcholesky",
                  max_rank: int | None = None, block: int = 128, seed: int = 0,
                  reserve_extra: int = 0, y_train=None, f0_train=None, y_test=None,
                  f0_test=None, lrs=None):
    """The factor :func:`predict` runs on (same arguments, same validation), as
    ``(factor, tol, algorithm, steps)`` with ``tol`` resolved (``None`` for a fixed rank
    without ``tol``); shared with ``ntkdyn check``, whose stability verdict is then on the
    coordinates the prediction uses.  ``reserve_extra``: bytes per coordinate needed after
    the factor besides the evolution's (one random network's NNGP factor).  With ``y_train``
    (and ``f0_train``, default 0), ``rank="auto"`` reads landmarks and keeps coordinates by
    the probe-row estimate of the trajectory error (:func:`probe_estimator`); without, by
    the residual trace.  With ``y_test`` too (and ``f0_test``), the rank is the fewest
    whose ``max(train, test)`` probe-row estimate is ``<= tol``
    (:func:`held_out_estimator`).  ``lrs`` (a sweep's rates; ``lr`` is then unused): every
    estimate is the maximum over the rates, so the rank chosen holds ``tol`` at each."""
    n = source.n
    auto = isinstance(rank, str)
    if auto and rank != "auto":
        raise ValueError(f"rank: expected a positive integer or 'auto', got {rank!r}")
    if not auto:
        rank = check_rank(rank, n)
    if tol is not None or auto:
        tol = check_tol(DEFAULT_TOL if tol is None else tol)
    if max_rank is not None:
        max_rank = check_max_rank(max_rank, n)
    agent_arr = np.asarray(agent)
    if agent_arr.shape != (n,):
        raise ValueError(f"agent: expected shape ({n},) (one agent index per training sample), "
                         f"got {agent_arr.shape}")
    from ntkdyn.graphs.sequences import is_process

    # a mixing process (lowrank.gossip): its agents; the estimates use E[W]'s network mean
    q_count = mixing.num_agents if is_process(mixing) else np.shape(mixing)[0]
    _, counts = agent_indices(agent_arr, q_count)
    lr_qs = [learning_rates(x, q_count) for x in ([lr] if lrs is None else lrs)]
    st = steps_array(steps)
    algo = get_algorithm(algorithm)
    scale = max(error_scale(x, counts, float(st[-1]), algo) for x in lr_qs)
    reserve = _reserve_per_rank(n, source.n_test, q_count, counts) + int(reserve_extra)
    if auto and y_train is not None:
        res = np.asarray(y_train, dtype=np.float64)
        res = (0.0 if f0_train is None else np.asarray(f0_train, dtype=np.float64)) - res
        if res.ndim != 2 or res.shape[0] != n:
            raise ValueError(f"y_train: expected shape ({n}, K), got {res.shape}")
        est, est_t = _rate_estimators(res, y_test, f0_test, lr_qs, agent_arr, counts, algo,
                                      float(st[-1]))
        factor = factorize(source, None, estimate=est, tol=tol, max_rank=max_rank,
                           method=method, block=block, seed=seed, reserve_per_rank=reserve,
                           estimate_test=est_t)
    elif auto:
        target = tol / scale if scale > 0 else np.inf
        factor = factorize(source, None, target_norm=target, max_rank=max_rank, method=method,
                           block=block, seed=seed, reserve_per_rank=reserve)
    else:
        factor = factorize(source, rank, max_rank=max_rank, method=method, block=block,
                           seed=seed, reserve_per_rank=reserve)
    return factor, tol, algo, st


def _rate_estimators(res, y_test, f0_test, lr_qs, agent, counts, algo, horizon: float):
    """``(estimate, estimate_test)`` of :func:`factorize` for ``rank="auto"`` at the rates
    ``lr_qs`` (one ``(Q,)`` array each): the probe-row estimates of one rate, or their
    maximum per rank over several (a sweep)."""
    ests, tests = [], []
    for lr_q in lr_qs:
        rates, per_step = mean_rates(lr_q, agent, counts, algo)
        ests.append(partial(probe_estimator, residual=res, rates=rates,
                            t_eff=horizon * per_step))
        tests.append(_test_estimate(y_test, f0_test, res, rates, horizon * per_step))
    if len(ests) == 1:
        return ests[0], tests[0]

    def worst(fns):
        def build(*args):
            per = [fn(*args) for fn in fns]
            return lambda r: max(p(r) for p in per)
        return build

    return worst(ests), None if tests[0] is None else worst(tests)


def _test_estimate(y_test, f0_test, residual: np.ndarray, rates: np.ndarray, t_eff: float):
    """The ``estimate_test`` of :func:`factorize` for ``rank="auto"``: the test-output
    estimate (:func:`held_out_estimator`) with the test residual ``f0_test - y_test``, or
    ``None`` without a test set."""
    if y_test is None:
        return None
    yt = np.asarray(y_test, dtype=np.float64)
    res_t = (0.0 if f0_test is None else np.asarray(f0_test, dtype=np.float64)) - yt

    def estimate_test(phi, phi_test, p_rows, p_cols, t_rows, t_cols):
        return held_out_estimator(phi, phi_test, p_rows, p_cols, t_rows, t_cols, residual,
                                  res_t, rates, t_eff)

    return estimate_test
