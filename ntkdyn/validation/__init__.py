"""Predicted against observed: real networks trained beside their predictions.

* :mod:`~ntkdyn.validation.harness` — :func:`ntkdyn.validate`: train the real (and the
  linearised) networks of a configuration, predict them, compare, write figures.
* :mod:`~ntkdyn.validation.agreement` — pointwise agreement metrics and statuses from the
  trajectory itself (growth).
* :mod:`~ntkdyn.validation.overlay` — predicted-vs-observed figures.
* :mod:`~ntkdyn.validation.edge` — where real training stops converging
  (``ntkdyn check --measure-edge``).
* :mod:`~ntkdyn.validation.coverage` — the fraction of real networks inside a predicted
  band, the widening factor (or law) fitted to it, and the calibrated band
  (``validate/coverage.py``).
"""
