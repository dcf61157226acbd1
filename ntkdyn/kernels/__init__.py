"""Neural tangent kernels: analytic (infinite width) and empirical (finite width).

* :func:`analytic_kernels`, :func:`analytic_ntk`, :func:`analytic_nngp` --
  closed-form recursions for fully connected networks
  (:mod:`ntkdyn.kernels.analytic`).
* :func:`empirical_ntk` (any ``apply(params, x)``), :func:`mlp_empirical_ntk`
  (fast Gram-matrix formula for :class:`ntkdyn.models.MLP`) and
  :func:`ntk_memory_bytes` (:mod:`ntkdyn.kernels.empirical`).

Layout everywhere: sample-major, outputs last. A *traced* kernel is
``(N1, N2)`` (the mean over outputs of the diagonal output blocks, so that the
full kernel of a wide network is approximately ``traced (x) I_K``); a *full*
kernel is ``(N1 K, N2 K)`` with row index ``i K + k``.
"""

from ntkdyn.kernels.analytic import analytic_kernels, analytic_nngp, analytic_ntk
from ntkdyn.kernels.empirical import empirical_ntk, mlp_empirical_ntk, ntk_memory_bytes

__all__ = [
    "analytic_kernels",
    "analytic_nngp",
    "analytic_ntk",
    "empirical_ntk",
    "mlp_empirical_ntk",
    "ntk_memory_bytes",
]
