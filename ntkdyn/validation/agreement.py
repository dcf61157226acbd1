r"""Agreement between a predicted and an observed trajectory.

For a metric ``m`` recorded per agent (``(T, Q)``) at the records both
trajectories share (``t = 0 .. T-1``; ``hat m`` predicted, ``m`` observed), the
headline figure is the *pointwise relative error*

.. math::  e_m = \max_t \frac{|\hat m(t) - m(t)|}{\max(|m(t)|, \varepsilon_m)}

("within x %" at every record), and beside it the error *at the horizon* (the
last common record ``T-1``),

.. math::  h_m = \frac{|\hat m(T-1) - m(T-1)|}{\max(|m(T-1)|, \varepsilon_m)},

both computed on the network mean (``mean_q m_q``) and per agent (agent ``q``'s
own curves; the report gives the worst agent).  The floor ``epsilon_m`` only
matters where the observed value is about zero:

* losses, the objective and accuracies: ``epsilon_m = VALUE_FLOOR * max_t |m(t)|``
  (``VALUE_FLOOR = 1e-3``: a value below 0.1 % of the largest one observed counts
  as zero);
* distances (``*_dist``; zero in exact arithmetic at ``t = 0``, and for the
  consensus distance of ATC on a complete graph at every ``t``):
  ``epsilon_m = DIST_FLOOR * max_t param_dist(t)`` (``DIST_FLOOR = 1e-6``),
  so that round-off over round-off does not count.

The lenient figure used before, ``max_t |hat m(t) - m(t)| / max_t |m(t)|``
(relative to the *largest* observed value, for a falling loss its initial value),
is kept as ``max_gap_over_max_obs``: it can read a few per cent where the curves
end 40 % apart.

Statuses from the trajectory itself (:func:`growth`, :func:`with_growth_status`):
a loss (train or test; network mean or any agent) that *ends* more than
``GROWTH_FACTOR`` times above its smallest value over the run (floored at
``LOSS_FLOOR`` times its first value) and is still growing at the last record, or
a parameter distance that ends more than ``GROWTH_FACTOR`` times above its value
at half the run's steps and is still growing, is a blow-up whatever its size.
Stable dynamics give falling or saturating curves (a loss that falls, a distance
that grows at most linearly: a factor of about 2 from half the run to its end),
while an unstable mode grows like ``rho^t``, so these ratios grow with the run
instead of waiting for a fixed bound (the solver's ``1e8``).

Width dependence: for the nonlinear network the error should fall like
``width^(-1/2)`` (DESIGN.md section 6); :func:`fit_slope` fits ``log e``
against ``log width`` by least squares.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntkdyn.trajectory import Trajectory

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "local_loss", "objective",
           "param_dist", "consensus_dist", "central_dist")
HEADLINE = ("test_loss", "param_dist")
VALUE_FLOOR = 1e-3
DIST_FLOOR = 1e-6
GROWTH_FACTOR = 10.0
LOSS_FLOOR = 1e-3
GROWTH_LOSSES = ("train_loss", "test_loss")
GROWTH_DISTANCES = ("param_dist",)
DEFINITION = ("pointwise relative error max_t |pred_t - obs_t| / max(|obs_t|, floor); "
              f"floor = {VALUE_FLOOR:g} x max_t |obs| for losses and accuracies, "
              f"{DIST_FLOOR:g} x max_t param_dist for distances; 'at horizon': the same at "
              "the last common record; 'max gap / max obs': max_t |pred - obs| / "
              "max_t |obs| (the lenient figure reported before)")


def _common_steps(pred: Trajectory, obs: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``pred`` and ``obs`` of the records both took (same step and, for a
    schedule recorded after each phase, same phase), up to a blow-up either detected."""
    if pred.phase is not None and obs.phase is not None:
        per = int(max(pred.phase.max(initial=0), obs.phase.max(initial=0))) + 1
        kp = np.asarray(pred.steps, float) * per + pred.phase
        ko = np.asarray(obs.steps, float) * per + obs.phase
    else:
        kp, ko = np.asarray(pred.steps, float), np.asarray(obs.steps, float)
    common, ip, io = np.intersect1d(kp, ko, return_indices=True)
    ends = [t.diverged_at for t in (pred, obs) if t.diverged and t.diverged_at is not None]
    if ends:  # compare up to the blow-up (arrays of a stopped run end there anyway)
        keep = np.asarray(obs.steps, float)[io] <= min(ends)
        ip, io = ip[keep], io[keep]
    return ip, io


def _as_float(pred, obs) -> tuple[np.ndarray, np.ndarray]:
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    if pred.shape != obs.shape:
        raise ValueError(f"pred: expected the shape of obs {obs.shape}, got {pred.shape}")
    return pred, obs


def pointwise_errors(pred, obs, floor: float = 0.0) -> np.ndarray:
    """``|pred_t - obs_t| / max(|obs_t|, floor)`` for every record ``t``."""
    pred, obs = _as_float(pred, obs)
    return np.abs(pred - obs) / np.maximum(np.maximum(np.abs(obs), floor), 1e-300)


def pointwise_error(pred, obs, floor: float = 0.0) -> float:
    """``max_t |pred_t - obs_t| / max(|obs_t|, floor)`` (``nan`` with nothing to compare)."""
    e = pointwise_errors(pred, obs, floor)
    return float(np.max(e)) if e.size else float("nan")


def horizon_error(pred, obs, floor: float = 0.0) -> float:
    """``|pred_T - obs_T| / max(|obs_T|, floor)`` at the last record ``T``."""
    e = pointwise_errors(pred, obs, floor)
    return float(e[-1]) if e.size else float("nan")


def max_gap_over_max_obs(pred, obs, floor: float = 0.0) -> float:
    """``max_t |pred_t - obs_t| / max(max_t |obs_t|, floor)``: the gap relative to the
    *largest* observed value (lenient: for a falling loss, its initial value)."""
    pred, obs = _as_float(pred, obs)
    if obs.size == 0:
        return float("nan")
    scale = max(float(np.max(np.abs(obs))), floor, 1e-300)
    return float(np.max(np.abs(pred - obs)) / scale)


def band_coverage(samples, observed, low: float = 0.05, high: float = 0.95,
                  skip: int = 1) -> float:
    r"""Fraction of the records ``t >= skip`` at which ``observed`` lies inside the predicted
    band: with ``samples`` ``(S, T)`` (a metric of ``S`` sampled sequences, e.g. mini-batch
    SGD) and ``q_p(t)`` its ``p``-quantile over the sequences at record ``t``,

    .. math::  c = \frac{1}{T - skip} \sum_{t \ge skip}
               [\, q_{low}(t) \le obs(t) \le q_{high}(t) \,].

    ``skip = 1`` (default) leaves out the first record, where every sequence starts from
    the same state and the band has zero width; ``nan`` with nothing left."""
    samples, observed = np.asarray(samples, float), np.asarray(observed, float)
    if samples.ndim != 2 or observed.shape != samples.shape[1:]:
        raise ValueError(f"samples: expected shape (S, T) with T = len(observed) "
                         f"({observed.shape[0] if observed.ndim else '?'}), got {samples.shape}")
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"low/high: expected 0 <= low < high <= 1, got {low!r}, {high!r}")
    if not isinstance(skip, int | np.integer) or skip < 0:
        raise ValueError(f"skip: expected a non-negative integer, got {skip!r}")
    lo, hi = np.quantile(samples, [low, high], axis=0)
    inside = ((observed >= lo) & (observed <= hi))[skip:]
    return float(np.mean(inside)) if inside.size else float("nan")


def floor_for(metric: str, obs: np.ndarray, param_dist_scale: float) -> float:
    """The floor ``epsilon_m`` of the module docstring for ``metric`` observed as ``obs``."""
    if metric.endswith("_dist"):
        return DIST_FLOOR * param_dist_scale
    obs = np.asarray(obs, float)
    return VALUE_FLOOR * float(np.max(np.abs(obs))) if obs.size else 0.0


def compare(pred: Trajectory, obs: Trajectory, metrics=METRICS) -> dict:
    """Pointwise relative errors of ``pred`` against ``obs``, per metric.

    Returns
    -------
    dict
        ``{"steps_compared", "last_step_compared", "definition", "metrics": {m: {...}},
        "status": {"predicted", "observed"}, "diverged_at": {...}, "quantity": {...}}``;
        per metric:
        ``mean`` (pointwise error of the network mean, the headline), ``mean_at_horizon``,
        ``mean_worst_step`` (where the pointwise maximum is), ``mean_max_gap_over_max_obs``
        (the lenient figure), ``per_agent`` / ``max_agent`` (pointwise, each agent's own
        curves), ``max_agent_at_horizon``, ``max_agent_max_gap_over_max_obs`` and ``floor``
        (of the network mean).  Errors are over the recorded steps both trajectories
        share, up to a blow-up (a diverged trajectory ends early, so the comparison
        stops there).  ``quantity``: what each trajectory describes (its
        ``metadata["quantity"]``; ``None`` where it does not say), e.g. one random
        network's expected losses against one trained network.

    ``ValueError`` naming ``obs`` where the two cannot describe one run: different agent
    counts, or no recorded step in common.
    """
    if pred.num_agents != obs.num_agents:
        raise ValueError(f"obs: expected the agents of pred (Q = {pred.num_agents}), got "
                         f"Q = {obs.num_agents}: a different partition or mixing matrix")
    kp, ko = np.asarray(pred.steps, float), np.asarray(obs.steps, float)
    if len(kp) and len(ko) and not np.intersect1d(kp, ko).size:
        raise ValueError(f"obs: no recorded step in common with pred (pred records "
                         f"{kp[0]:g}..{kp[-1]:g}, obs {ko[0]:g}..{ko[-1]:g})")
    ip, io = _common_steps(pred, obs)
    steps = np.asarray(obs.steps, float)[io]
    out = {"steps_compared": int(len(ip)),
           "last_step_compared": float(steps[-1]) if len(io) else None,
           "definition": DEFINITION,
           "status": {"predicted": pred.status, "observed": obs.status},
           "diverged_at": {"predicted": pred.diverged_at, "observed": obs.diverged_at},
           "quantity": {"predicted": pred.metadata.get("quantity"),
                        "observed": obs.metadata.get("quantity")},
           "metrics": {}}
    dist_scale = float(np.max(np.abs(obs.param_dist[io]))) if len(io) else 0.0
    nan = float("nan")
    for m in metrics:
        p, o = getattr(pred, m), getattr(obs, m)
        if p is None or o is None:
            continue
        p, o = p[ip], o[io]
        pm, om = p.mean(axis=1), o.mean(axis=1)
        floor = floor_for(m, om, dist_scale)
        e = pointwise_errors(pm, om, floor)
        agents = [pointwise_errors(p[:, q], o[:, q], floor_for(m, o[:, q], dist_scale))
                  for q in range(o.shape[1])]
        per_agent = [float(np.max(a)) if a.size else nan for a in agents]
        gaps = [max_gap_over_max_obs(p[:, q], o[:, q], floor_for(m, o[:, q], dist_scale))
                for q in range(o.shape[1])]
        out["metrics"][m] = {
            "mean": float(np.max(e)) if e.size else nan,
            "mean_at_horizon": float(e[-1]) if e.size else nan,
            "mean_worst_step": float(steps[np.argmax(e)]) if e.size else None,
            "mean_max_gap_over_max_obs": max_gap_over_max_obs(pm, om, floor),
            "per_agent": per_agent,
            "max_agent": float(np.max(per_agent)) if per_agent else nan,
            "max_agent_at_horizon": float(max(a[-1] for a in agents))
            if agents and agents[0].size else nan,
            "max_agent_max_gap_over_max_obs": float(np.max(gaps)) if gaps else nan,
            "floor": floor,
        }
    return out


def _loss_blow_up(steps: np.ndarray, x: np.ndarray, factor: float) -> tuple | None:
    """``(record of the start, base)`` if the loss ``x`` ends above ``factor`` times its
    smallest earlier value (at least ``LOSS_FLOOR * x[0]``) and is still growing."""
    if len(x) < 3 or not np.all(np.isfinite(x)):
        return None
    low = int(np.argmin(x[:-1]))
    base = max(float(x[low]), LOSS_FLOOR * abs(float(x[0])), 1e-300)
    if not (x[-1] > factor * base and x[-1] > x[-2]):
        return None
    above = x > factor * base
    start = len(x) - 1
    while start - 1 > low and above[start - 1]:
        start -= 1
    return start, base


def _distance_blow_up(steps: np.ndarray, x: np.ndarray, factor: float) -> tuple | None:
    """``(record of the start, base)`` if the distance ``x`` ends above ``factor`` times its
    value at half the steps of the run (a positive one) and is still growing."""
    if len(x) < 3 or not np.all(np.isfinite(x)):
        return None
    half = int(np.searchsorted(steps, steps[-1] / 2.0, side="right")) - 1
    if half < 0 or half >= len(x) - 1 or not x[half] > 0:
        return None
    base = float(x[half])
    if not (x[-1] > factor * base and x[-1] > x[-2]):
        return None
    start = len(x) - 1
    while start - 1 > half and x[start - 1] > factor * base:
        start -= 1
    return start, base


def growth(traj: Trajectory, factor: float = GROWTH_FACTOR) -> dict | None:
    """A blow-up seen in the trajectory itself (module docstring), or ``None``.

    Looks at the train and test losses and ``||theta_q - theta_0||``, of the network mean
    and of every agent.  Returns ``{"metric", "who", "step" (first record of the final
    rise above the threshold), "base", "last", "last_step", "words"}`` for the earliest
    such rise.
    """
    steps = np.asarray(traj.steps, float)
    if traj.phase is not None:  # one record per step: the last phase of each
        keep = np.r_[steps[1:] != steps[:-1], True]
        steps = steps[keep]
    else:
        keep = slice(None)
    found = []
    for names, test, what in ((GROWTH_LOSSES, _loss_blow_up, "its smallest value"),
                              (GROWTH_DISTANCES, _distance_blow_up,
                               "its value at half the steps")):
        for m in names:
            arr = getattr(traj, m, None)
            if arr is None:
                continue
            arr = np.asarray(arr, float)[keep]
            for who, x in [("network mean", arr.mean(axis=1))] + \
                    [(f"agent {q}", arr[:, q]) for q in range(arr.shape[1])]:
                hit = test(steps, x, factor)
                if hit is not None:
                    start, base = hit
                    found.append({"metric": m, "who": who, "step": int(steps[start]),
                                  "base": base, "last": float(x[-1]),
                                  "last_step": int(steps[-1]), "compared_to": what})
    if not found:
        return None
    first = min(found, key=lambda f: (f["step"], f["who"] != "network mean"))
    first["words"] = (f"{first['metric']} ({first['who']}) grew to {first['last']:.3g} at "
                      f"step {first['last_step']}, {first['last'] / first['base']:.3g} x "
                      f"{first['compared_to']} ({first['base']:.3g}), and still growing")
    return first


def with_growth_status(traj: Trajectory, factor: float = GROWTH_FACTOR) -> Trajectory:
    """``traj`` with ``status = "diverged"`` (``diverged_at``: the step the final rise
    started) when :func:`growth` sees a blow-up; unchanged otherwise or when already
    diverged.  The arrays are kept; ``metadata["blow_up"]`` says what grew."""
    if traj.diverged:
        return traj
    hit = growth(traj, factor)
    if hit is None:
        return traj
    meta = dict(traj.metadata, blow_up=hit["words"] + " (detected from the trajectory)",
                divergence=f"blow-up detected from the trajectory: {hit['words']}")
    return dataclasses.replace(traj, status="diverged", diverged_at=hit["step"], metadata=meta)


def fit_slope(widths, errors) -> tuple[float, float]:
    """Least-squares ``log e = slope * log width + c``; returns ``(slope, exp(c))``.

    Non-finite or non-positive errors are skipped; ``(nan, nan)`` with fewer than two points.
    """
    w, e = np.asarray(widths, float), np.asarray(errors, float)
    ok = np.isfinite(e) & (e > 0) & (w > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.log(w[ok]), np.log(e[ok]), 1)
    return float(slope), float(np.exp(intercept))


def status_line(name: str, traj: Trajectory) -> str:
    """``"<name>: ok"`` or ``"<name>: diverged at step k"`` (plus the regime note if any)."""
    if traj.status == "diverged":
        how = traj.metadata.get("blow_up")
        return f"{name}: diverged at step {traj.diverged_at}" + (f" ({how})" if how else "")
    if traj.status == "unstable":
        return f"{name}: unstable (linearised dynamics diverge; not yet blown up by the horizon)"
    return f"{name}: {traj.status}"


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.3g}%"


def report_text(comparisons: dict[str, dict], header: list[str] | None = None) -> str:
    """Plain-text table of :func:`compare` results (one block per comparison)."""
    lines = list(header or [])
    for title, comp in comparisons.items():
        lines.append("")
        last = comp["last_step_compared"]
        lines.append(f"{title}  ({comp['steps_compared']} records compared"
                     + (f", up to step {last:g})" if last is not None else ")"))
        for who in ("predicted", "observed"):
            st, at = comp["status"][who], comp["diverged_at"][who]
            if st != "ok":
                lines.append(f"  {who}: " + (f"diverged at step {at}" if at is not None else st))
        lines.append(f"  {'':<16}{' network mean ':-^51}  {' worst agent ':-^23}")
        lines.append(f"  {'metric':<16}{'max over t':>11}{'(at step)':>11}{'at horizon':>12}"
                     f"{'max gap/max obs':>17}  {'max over t':>11}{'at horizon':>12}")
        for m, v in comp["metrics"].items():
            at = v.get("mean_worst_step")
            lines.append(f"  {m:<16}{_pct(v['mean']):>11}"
                         f"{'' if at is None else f'({at:g})':>11}"
                         f"{_pct(v['mean_at_horizon']):>12}"
                         f"{_pct(v['mean_max_gap_over_max_obs']):>17}  "
                         f"{_pct(v['max_agent']):>11}{_pct(v['max_agent_at_horizon']):>12}")
    return "\n".join(lines) + "\n"


__all__ = ["METRICS", "HEADLINE", "DEFINITION", "compare", "fit_slope", "floor_for", "growth",
           "horizon_error", "max_gap_over_max_obs", "pointwise_error", "pointwise_errors",
           "report_text", "status_line", "with_growth_status"]
