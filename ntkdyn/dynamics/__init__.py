"""Kernel-space dynamics of the linearised network: the engine under every prediction.

* :mod:`~ntkdyn.dynamics.problem` — :class:`KernelProblem` (kernels, targets, agents,
  mixing), validated and laid out once.
* :mod:`~ntkdyn.dynamics.solver` — the chunked ``lax.scan`` over steps in kernel space
  (records, phases, divergence checks, the centralised reference).
* :mod:`~ntkdyn.dynamics.run` — :func:`run_problem`: memory checks, the solver, raw records
  -> :class:`~ntkdyn.trajectory.Trajectory`.
* :mod:`~ntkdyn.dynamics.stability` — step-operator spectra: exact stable set of rates,
  sufficient bound, spectral radius.
* :mod:`~ntkdyn.dynamics.steady_state` — fixed point and convergence rate.
* :mod:`~ntkdyn.dynamics.sharding` — kernels and state over several devices.

Everything here takes resolved objects (:class:`~ntkdyn.algorithms.Algorithm`, a mixing
matrix or :class:`~ntkdyn.graphs.sequences.MixingProcess`, arrays); user-facing entry
points live in :mod:`ntkdyn.prediction`.
"""
