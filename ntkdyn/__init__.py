"""ntkdyn: closed-form predictions of peer-to-peer learning dynamics of wide networks."""

from . import (
    _config,  # noqa: F401  (enables float64 in JAX)
    algorithms,
    data,
    graphs,
)
from .predict import predict_from_kernels, sweep_from_kernels
from .trajectory import Trajectory
