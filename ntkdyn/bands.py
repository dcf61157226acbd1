r"""Bands from sampled draws: the band over initialisations with the finite-width band
added, and the calibrated band (the combination widened by one fitted factor).

Below :mod:`ntkdyn.trajectory` (``Trajectory.band(metric, over="calibrated")``) and used by
:mod:`ntkdyn.validation.coverage`, which re-exports these names and fitted
:data:`CALIBRATED_C`.  With draws ``(P, T, Q)`` over initialisations (infinite width) and
``(S, T, Q)`` over the empirical kernels of width-``n`` networks, the combined band adds
the two spreads' variances side by side,

    mid = m_init + d,   lo = mid - sqrt((m_init - lo_init)^2 + h_w^2),
                        hi = mid + sqrt((hi_init - m_init)^2 + h_w^2),

(``h_w`` half the width draws' 5-95 % range, ``d`` the finite-width shift of the mean), and
the calibrated band scales each side's half-width by ``c = CALIBRATED_C``.
"""

from __future__ import annotations

import numpy as np

#: The widening factor of the combined 5-95 % band (:func:`calibrated_band`), FITTED by
#: ``validate/coverage.py`` (``ntkdyn.validation.coverage.fit_widening``, target 90 %) on
#: the CALIBRATION configurations only (ring DGD lr 0.4, torus ATC lr 0.8; digits 200 /
#: 100, 8 agents, depth-1 ReLU MLP, W_std 1.4, squared loss, 200 steps), test loss, widths
#: 256-2048, 40 seeds each, 16 width kernels with paired draws; held out: complete CTA,
#: ring gradient tracking (README "Coverage").  Valid for that family of problems, not
#: beyond it.  The factor each width alone would need falls with the width (1.17, 0.99,
#: 0.88, 0.87 at 256, 512, 1024, 2048): this one constant under-covers slightly at 256 and
#: over at 2048.
CALIBRATED_C = 0.9429
#: the levels of the calibrated band (the fit is for the 5-95 % band only)
CALIBRATED_LEVELS = (0.05, 0.95)

__all__ = ["CALIBRATED_C", "CALIBRATED_LEVELS", "add_width_band", "as_band", "band_from_draws",
           "calibrated_band", "calibrated_factor", "monte_carlo_error", "widen"]


def as_band(lo, mid, hi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, mid, hi)`` as float64 arrays of one shape with ``lo <= mid <= hi``
    (``ValueError`` naming them otherwise)."""
    lo, mid, hi = (np.asarray(a, dtype=np.float64) for a in (lo, mid, hi))
    if not lo.shape == mid.shape == hi.shape:
        raise ValueError(f"lo/mid/hi: expected equal shapes, got {lo.shape}, {mid.shape}, "
                         f"{hi.shape}")
    if np.any(lo > mid) or np.any(mid > hi):
        raise ValueError("lo/mid/hi: expected lo <= mid <= hi everywhere")
    return lo, mid, hi


def band_from_draws(draws, low: float = 0.05, high: float = 0.95):
    """``(lo, median, hi)`` over the first axis of ``draws`` (``(P, T, Q)``), linear
    interpolation between order statistics (``numpy.quantile``'s default)."""
    d = np.asarray(draws, dtype=np.float64)
    if d.ndim < 2 or d.shape[0] < 2:
        raise ValueError(f"draws: expected (P, ...) with P >= 2, got shape {d.shape}")
    if not 0.0 <= low < 0.5 < high <= 1.0:
        raise ValueError(f"low/high: expected 0 <= low < 0.5 < high <= 1, got {low}, {high}")
    lo, mid, hi = np.quantile(d, [low, 0.5, high], axis=0)
    return lo, mid, hi


def widen(lo, mid, hi, c: float):
    """The band ``mid -/+ c`` times each side's half-width: ``(mid - c (mid - lo),
    mid + c (hi - mid))``."""
    if not (np.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a positive finite factor, got {c!r}")
    lo, mid, hi = as_band(lo, mid, hi)
    return mid - c * (mid - lo), mid + c * (hi - mid)


def add_width_band(init_draws, width_draws, low: float = 0.05, high: float = 0.95,
                   paired_draws=None):
    """Band over initialisations and finite-width kernels together, variances added:
    ``(lo, mid, hi)`` with ``mid = m_init + d``, ``lo = mid - sqrt((m_init - lo_init)^2 +
    h_w^2)``, ``hi = mid + sqrt((hi_init - m_init)^2 + h_w^2)``, where ``h_w`` is half the
    ``low``-``high`` range of ``width_draws`` and ``d`` the finite-width shift of the mean
    (``mean(width_draws) - mean(init_draws)``).  ``init_draws``: ``(P, T, Q)``;
    ``width_draws``: ``(S, T, Q)``.

    ``paired_draws`` (``(P', T, Q)``, optional): the infinite-width prediction from the
    *same* ``P'`` standard-normal draws that every width sample averages over (common
    random numbers); then ``d = mean(width_draws) - mean(paired_draws)``, free of the
    Monte-Carlo error of a mean over only ``P'`` draws (0.04-0.08 in test loss with
    ``P' = 32`` on the digits configurations of ``validate/coverage.py``)."""
    lo_i, m_i, hi_i = band_from_draws(init_draws, low, high)
    lo_w, _, hi_w = band_from_draws(width_draws, low, high)
    init = np.asarray(init_draws, dtype=np.float64)
    wd = np.asarray(width_draws, dtype=np.float64)
    if wd.shape[1:] != init.shape[1:]:
        raise ValueError(f"width_draws: expected shape (S, {init.shape[1:]}), got {wd.shape}")
    ref = init if paired_draws is None else np.asarray(paired_draws, dtype=np.float64)
    if ref.shape[1:] != init.shape[1:]:
        raise ValueError(f"paired_draws: expected shape (P', {init.shape[1:]}), got "
                         f"{ref.shape}")
    h_w = 0.5 * (hi_w - lo_w)
    mid = m_i + (wd.mean(axis=0) - ref.mean(axis=0))
    lo = mid - np.sqrt((m_i - lo_i) ** 2 + h_w**2)
    hi = mid + np.sqrt((hi_i - m_i) ** 2 + h_w**2)
    return lo, mid, hi


def calibrated_factor(width) -> float:
    """The factor by which :func:`calibrated_band` scales the combined band's half-widths at
    hidden width ``width``: ``CALIBRATED_C`` (fitted on the calibration configurations of
    ``validate/coverage.py``, constant in the width; see its comment)."""
    if not (isinstance(width, int | np.integer) and width >= 1):
        raise ValueError(f"width: expected a positive integer, got {width!r}")
    return CALIBRATED_C


def calibrated_band(init_draws, width_draws, width, paired_draws=None):
    """The calibrated 5-95 % band of a metric of ONE network of hidden width ``width``:
    the band over initialisations with the finite-width band added
    (:func:`add_width_band`, ``paired_draws`` recommended), each side's half-width scaled
    by :func:`calibrated_factor` (:func:`widen`).  ``init_draws``: ``(P, T, Q)`` (e.g.
    ``traj.draws[metric]`` of ``nd.predict(..., f0="random")``), ``width_draws``:
    ``(S, T, Q)`` (``traj.width_draws[metric]`` of ``nd.predict(..., width=width)``).
    Returns ``(lo, mid, hi)``.  Measured coverage: README "Coverage"."""
    lo, mid, hi = add_width_band(init_draws, width_draws, 0.05, 0.95,
                                 paired_draws=paired_draws)
    c = calibrated_factor(width)
    wlo, whi = widen(lo, mid, hi, c)
    return wlo, mid, whi


def monte_carlo_error(draws, shared: int = 1) -> np.ndarray:
    r"""Standard error of the mean over the first axis of ``draws`` (``(P, ...)``), the
    Monte-Carlo error of an expected value estimated from ``P`` sampled networks or
    sequences.

    Independent samples (``shared = 1``): ``sd / sqrt(P)`` (``sd`` with ``ddof = 1``).

    Sampled random networks of the squared loss share draw columns cyclically: network
    ``s`` has output ``k`` from column ``(s + k) mod P``
    (:func:`ntkdyn.dynamics.solver.network_columns`, ``shared = K`` outputs), so networks
    less than ``K`` apart are dependent.  With ``L_s`` network ``s``'s value and equal
    variances, ``Var(mean) = P^-2 sum_{s, s'} Cov(L_s, L_s')``; ``L_s`` and ``L_s'`` are
    independent unless their cyclic distance is below ``K`` (at most ``min(2 K - 1, P)``
    partners ``s'`` per ``s``, itself included), and ``|Cov| <= Var(L)``, so

        SE <= sd * sqrt(min(2 K - 1, P) / P),

    a bound for every metric (losses and accuracies alike), with ``sd`` estimated from the
    draws.  For a loss that is a sum over outputs the tighter ``sd sqrt(K / P)`` holds
    (README "One random network"), not used here.  Returns the bound (or the standard
    error), shape ``draws.shape[1:]``."""
    d = np.asarray(draws, dtype=np.float64)
    if d.ndim < 1 or d.shape[0] < 2:
        raise ValueError(f"draws: expected (P, ...) with P >= 2, got shape {d.shape}")
    if isinstance(shared, bool) or not isinstance(shared, int | np.integer) or shared < 1:
        raise ValueError(f"shared: expected an integer >= 1, got {shared!r}")
    p = d.shape[0]
    partners = min(2 * int(shared) - 1, p)
    return np.std(d, axis=0, ddof=1) * np.sqrt(partners / p)
