r"""Agreement between a predicted and an observed trajectory.

For a metric ``m`` recorded per agent (``(T, Q)``) at the steps both
trajectories share, the *relative trajectory error* is

.. math::  e_m = \frac{\max_t |\hat m(t) - m(t)|}{\max_t |m(t)|}

(``hat m`` predicted, ``m`` observed), computed on the network mean
(``mean_q m_q``) and per agent (``e_{m,q}`` with agent ``q``'s own curves; the
report gives the largest).  Distances that are zero in exact arithmetic (the
consensus distance of ATC on a complete graph, say) would make this ratio
round-off over round-off, so for ``*_dist`` metrics the denominator is at least
``DIST_FLOOR`` times the largest observed ``param_dist``.

Width dependence: for the nonlinear network the error should fall like
``width^(-1/2)`` (DESIGN.md section 6); :func:`fit_slope` fits ``log e``
against ``log width`` by least squares.
"""

from __future__ import annotations

import numpy as np

from .trajectory import Trajectory

METRICS = ("train_loss", "test_loss", "train_acc", "test_acc", "local_loss", "objective",
           "param_dist", "consensus_dist", "central_dist")
HEADLINE = ("test_loss", "param_dist")
DIST_FLOOR = 1e-6


def _common_steps(pred: Trajectory, obs: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``pred`` and ``obs`` of the records both took (same step and, for a
    schedule recorded after each phase, same phase)."""
    if pred.phase is not None and obs.phase is not None:
        per = int(max(pred.phase.max(initial=0), obs.phase.max(initial=0))) + 1
        kp = np.asarray(pred.steps, float) * per + pred.phase
        ko = np.asarray(obs.steps, float) * per + obs.phase
    else:
        kp, ko = np.asarray(pred.steps, float), np.asarray(obs.steps, float)
    common, ip, io = np.intersect1d(kp, ko, return_indices=True)
    return ip, io


def relative_error(pred: np.ndarray, obs: np.ndarray, floor: float = 0.0) -> float:
    """``max |pred - obs| / max(max |obs|, floor)`` (``nan`` when there is nothing to compare)."""
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    if obs.size == 0:
        return float("nan")
    scale = max(float(np.max(np.abs(obs))), floor, 1e-300)
    return float(np.max(np.abs(pred - obs)) / scale)


def compare(pred: Trajectory, obs: Trajectory, metrics=METRICS) -> dict:
    """Relative trajectory errors of ``pred`` against ``obs``, per metric.

    Returns
    -------
    dict
        ``{"steps_compared", "last_step_compared", "metrics": {m: {"mean", "per_agent",
        "max_agent"}}, "status": {"predicted", "observed"}, "diverged_at": {...}}``;
        errors are over the recorded steps both trajectories share (a diverged
        trajectory ends early, so the comparison stops there).
    """
    ip, io = _common_steps(pred, obs)
    out = {"steps_compared": int(len(ip)),
           "last_step_compared": float(obs.steps[io[-1]]) if len(io) else None,
           "status": {"predicted": pred.status, "observed": obs.status},
           "diverged_at": {"predicted": pred.diverged_at, "observed": obs.diverged_at},
           "metrics": {}}
    dist_scale = (float(np.max(np.abs(obs.param_dist[io]))) if len(io) else 0.0)
    for m in metrics:
        p, o = getattr(pred, m), getattr(obs, m)
        if p is None or o is None:
            continue
        p, o = p[ip], o[io]
        floor = DIST_FLOOR * dist_scale if m.endswith("_dist") else 0.0
        per_agent = [relative_error(p[:, q], o[:, q], floor) for q in range(o.shape[1])]
        out["metrics"][m] = {
            "mean": relative_error(p.mean(axis=1), o.mean(axis=1), floor),
            "per_agent": per_agent,
            "max_agent": float(np.max(per_agent)) if per_agent else float("nan"),
        }
    return out


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
        return f"{name}: diverged at step {traj.diverged_at}"
    if traj.status == "unstable":
        return f"{name}: unstable (linearised dynamics diverge; not yet blown up by the horizon)"
    return f"{name}: {traj.status}"


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
        lines.append(f"  {'metric':<16}{'network mean':>14}{'worst agent':>14}")
        for m, v in comp["metrics"].items():
            lines.append(f"  {m:<16}{v['mean']:>14.3e}{v['max_agent']:>14.3e}")
    return "\n".join(lines) + "\n"


__all__ = ["METRICS", "HEADLINE", "compare", "fit_slope", "relative_error", "report_text",
           "status_line"]
