"""Real peer-to-peer training of Q networks (the nonlinear network or its linearisation).

* :func:`train` (:mod:`~ntkdyn.training.trainer`) — vmapped agents, jitted steps, the same
  :class:`~ntkdyn.algorithms.Algorithm` schedules as the kernel-space solver, records as a
  :class:`~ntkdyn.trajectory.Trajectory`.
* :mod:`~ntkdyn.training.checkpoint` — write, check and resume checkpoints.

Training never imports the prediction side (checked by import-linter); ``nd.train.train``
is this package's :func:`train`.
"""

from ntkdyn.training.trainer import train

__all__ = ["train"]
