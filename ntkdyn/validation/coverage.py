r"""Coverage of a predicted band by real networks, and one widening factor fitted to it.

A band is three curves per record and agent, ``lo <= m <= hi`` (``(T, Q)``: the 5 %, 50 %
and 95 % quantiles of a metric over sampled initialisations, say).  Real networks give
``x_{s,t,q}`` (``(S, T, Q)``: seed, record, agent).  The **coverage** is the fraction of
``(s, t, q)`` (records ``t >= first``) with ``lo_{tq} <= x_{stq} <= hi_{tq}``; a
calibrated 90 % band covers about 90 %.  The records and agents of one seed are
strongly dependent, so the Monte-Carlo error of a coverage is about
``sqrt(c (1 - c) / S)`` (seeds are the independent units), not ``/ sqrt(S T Q)``.

**Widening** (:func:`widen`): ``m - c (m - lo)`` to ``m + c (hi - m)``, the centre (the
median) kept and each side's half-width scaled by ``c`` (asymmetric bands stay
asymmetric).  A point is inside the widened band iff its *required factor*

.. math::  r = \frac{m - x}{m - lo} \ (x < m), \qquad r = \frac{x - m}{hi - m} \ (x \ge m)

(:func:`required_factors`; ``r = 0`` at the centre, ``+inf`` off a zero-width side) is at
most ``c``, so the coverage of the widened band is the empirical distribution function
of ``r`` at ``c``, and the smallest ``c`` that reaches a target coverage ``p`` is the
``p``-quantile of the pooled ``r`` (:func:`fit_widening`, exact, no search).

**Adding the finite-width band** (:func:`add_width_band`): the band over initialisations
(infinite width) and the band over the kernels of width-``n`` networks
(:mod:`ntkdyn.finite_width`) are two parts of one network's spread; by the law of total
variance their variances add (``theory/finite_width.md`` section 6), so each side's
half-width becomes ``sqrt(h_init^2 + h_width^2)`` and the centre moves by the
finite-width shift of the mean, ``d = mean(width draws) - mean(init draws)``.

**A widening law** (:func:`fit_widening_law`): what neither band contains (the kernel's
motion during training) is ``O(n^{-1/2})``, so the factor may fall with the width,
``c(n) = 1 + a n^{-1/2}`` (:func:`widening_factor`).  A point of a width-``n`` network is
inside iff ``r <= 1 + a n^{-1/2}``, i.e. ``(r - 1) n^{1/2} <= a``: the smallest ``a``
reaching coverage ``p`` on points pooled over widths is the ``p``-quantile of the pooled
``(r - 1) n^{1/2}``, exact as for one factor.  :func:`final_coverage` is the coverage at
the last record alone (the horizon), apart from the coverage over all records.
"""

from __future__ import annotations

import numpy as np

from ntkdyn.bands import (  # the combination and the fitted factor live below trajectory
    CALIBRATED_C,
    add_width_band,
    as_band,
    band_from_draws,
    calibrated_band,
    calibrated_factor,
    widen,
)

#: relative margin on a fitted factor (the edge point stays inside after rounding)
EDGE = 1e-12

__all__ = ["CALIBRATED_C", "add_width_band", "band_from_draws", "calibrated_band",
           "calibrated_factor", "coverage", "final_coverage", "fit_widening",
           "fit_widening_law", "required_factors", "widen", "widening_factor"]


def _real(real, band_shape: tuple, first: int) -> np.ndarray:
    x = np.asarray(real, dtype=np.float64)
    if x.ndim != len(band_shape) + 1 or x.shape[1:] != band_shape:
        raise ValueError(f"real: expected shape (S, {', '.join(map(str, band_shape))}), got "
                         f"{x.shape}")
    if not (isinstance(first, int | np.integer) and 0 <= first < x.shape[1]):
        raise ValueError(f"first: expected an integer in [0, {x.shape[1]}), got {first!r}")
    return x[:, first:]


def coverage(real, lo, hi, first: int = 1) -> float:
    """Fraction of ``real[s, t, q]`` (``t >= first``) with ``lo[t, q] <= x <= hi[t, q]``
    (bounds included; a NaN, e.g. a diverged run, counts as outside)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"lo/hi: expected equal shapes, got {lo.shape} and {hi.shape}")
    x = _real(real, lo.shape, first)
    inside = (x >= lo[first:]) & (x <= hi[first:])
    return float(np.mean(inside))


def required_factors(real, lo, mid, hi, first: int = 1) -> np.ndarray:
    """The factor ``r`` by which the band's half-width on ``x``'s side of the median must
    be scaled for ``x`` to lie inside (module docstring), flat over ``(s, t >= first, q)``;
    ``+inf`` for a NaN or off a side of zero width."""
    lo, mid, hi = as_band(lo, mid, hi)
    x = _real(real, lo.shape, first)
    lo, mid, hi = lo[first:], mid[first:], hi[first:]
    below = x < mid
    side = np.where(below, mid - lo, hi - mid)
    gap = np.abs(x - mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(side > 0, gap / np.where(side > 0, side, 1.0),
                     np.where(gap == 0, 0.0, np.inf))
    r = np.where(np.isnan(x), np.inf, r)
    return r.ravel()


def fit_widening(factors, target: float = 0.9) -> float:
    """The smallest ``c`` whose widened band covers at least ``target`` of the points
    whose :func:`required_factors` are pooled in ``factors`` (a sequence of arrays, e.g.
    one per configuration and width, concatenated with equal weight per point): the
    ``target``-quantile of the pooled factors (the order statistic, no interpolation).
    ``+inf`` if more than ``1 - target`` of the points can never be covered.  The order
    statistic is returned times ``1 + EDGE`` (``EDGE = 1e-12``) so that the point on the
    widened band's edge stays inside after the rounding of :func:`widen`."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target: expected a coverage in (0, 1), got {target!r}")
    r = np.sort(np.concatenate([np.ravel(np.asarray(f, dtype=np.float64)) for f in factors]))
    if r.size == 0:
        raise ValueError("factors: expected at least one point")
    k = int(np.ceil(target * r.size)) - 1
    return float(r[max(k, 0)] * (1.0 + EDGE))


def final_coverage(real, lo, hi) -> float:
    """:func:`coverage` at the last record alone (the horizon): the fraction of
    ``real[s, -1, q]`` with ``lo[-1, q] <= x <= hi[-1, q]``.  Its Monte-Carlo error is
    about ``sqrt(c (1 - c) / S)`` too (the agents of one seed move together)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if lo.shape != hi.shape:
        raise ValueError(f"lo/hi: expected equal shapes, got {lo.shape} and {hi.shape}")
    x = _real(real, lo.shape, 0)
    return coverage(x[:, -1:], lo[-1:], hi[-1:], first=0)


def widening_factor(width, a: float, exponent: float = 0.5) -> float:
    """``c(n) = 1 + a n^{-exponent}`` at hidden width ``n = width`` (``ValueError`` if the
    factor is not positive)."""
    if not (isinstance(width, int | np.integer) and width >= 1):
        raise ValueError(f"width: expected a positive integer, got {width!r}")
    if not (np.isfinite(a) and np.isfinite(exponent) and exponent > 0):
        raise ValueError(f"a/exponent: expected finite a and exponent > 0, got {a!r}, "
                         f"{exponent!r}")
    c = 1.0 + float(a) * float(width) ** (-float(exponent))
    if c <= 0:
        raise ValueError(f"width: c(n) = 1 + a n^-{exponent} = {c:.3g} <= 0 at n = {width}")
    return c


def fit_widening_law(factors_by_width, target: float = 0.9, exponent: float = 0.5) -> float:
    """The smallest ``a`` such that the bands widened by ``c(n) = 1 + a n^{-exponent}``
    cover at least ``target`` of the pooled points: the ``target``-quantile (order
    statistic) of ``(r - 1) n^{exponent}`` over ``factors_by_width``, a mapping ``width ->``
    sequence of :func:`required_factors` arrays (module docstring).  ``+inf`` if more than
    ``1 - target`` of the points can never be covered.  May be negative (a band too wide at
    every width); the margin ``EDGE`` keeps the edge point inside, as in
    :func:`fit_widening`."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target: expected a coverage in (0, 1), got {target!r}")
    if not (np.isfinite(exponent) and exponent > 0):
        raise ValueError(f"exponent: expected a positive float, got {exponent!r}")
    scaled = []
    for width, factors in dict(factors_by_width).items():
        if not (isinstance(width, int | np.integer) and width >= 1):
            raise ValueError(f"factors_by_width: expected positive integer widths, got "
                             f"{width!r}")
        r = np.concatenate([np.ravel(np.asarray(f, dtype=np.float64)) for f in factors])
        scaled.append((r - 1.0) * float(width) ** float(exponent))
    s = np.sort(np.concatenate(scaled)) if scaled else np.empty(0)
    if s.size == 0:
        raise ValueError("factors_by_width: expected at least one point")
    a = float(s[max(int(np.ceil(target * s.size)) - 1, 0)])
    return a + EDGE * max(abs(a), 1.0)


