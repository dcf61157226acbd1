"""ntkdyn: closed-form predictions of peer-to-peer learning dynamics of wide networks.

Importing ntkdyn enables float64 in JAX (``jax_enable_x64``): the solver must
agree with brute-force training of the linearised network to round-off.

Main entry points
-----------------
predict, predict_sweep          architecture + partitioned data + mixing -> Trajectory
predict_from_kernels, sweep_from_kernels
                                your own kernels (arrays) -> Trajectory
build_problem, make_problem     the kernel-space problem, for stability / fixed_point
stability, fixed_point          exact lr*, sufficient bound, spectral radius; steady state
Trajectory                      per-agent metrics, save / load (.npz)
GossipTrajectory                random gossip: means over sampled sequences, bands, E[W] run
algorithms                      dgd, atc, cta, gd, p2pl(L, C), gradient_tracking, diging,
                                extra, momentum(beta): schedules of mix and adapt
graphs, gossip                  topologies, mixing matrices; periodic and random sequences
train.train                     real peer-to-peer training (vmapped agents, jitted steps)
validate                        trained vs predicted trajectories, agreement, overlay figures
"""

from . import (
    _config,  # noqa: F401  (enables float64 in JAX)
    activations,
    algorithms,
    data,
    gossip,
    graphs,
    kernels,
    models,
    sharding,
    train,  # the module: ntkdyn.train.train
)
from .algorithms import Algorithm
from .check import CheckReport, check
from .harness import ValidationResult, validate
from .pipeline import build_problem, fixed_point, init_params, predict, predict_sweep, stability
from .predict import predict_from_kernels, sweep_from_kernels
from .problem import KernelProblem, make_problem
from .spectrum import StabilityReport
from .steady_state import FixedPoint
from .trajectory import GossipTrajectory, Trajectory

__version__ = "0.1.0"

__all__ = [
    "Algorithm", "CheckReport", "FixedPoint", "GossipTrajectory", "KernelProblem",
    "StabilityReport", "Trajectory", "activations", "algorithms", "build_problem", "check",
    "data", "fixed_point", "gossip", "graphs",
    "init_params", "kernels", "make_problem", "models", "predict", "predict_from_kernels",
    "predict_sweep", "sharding", "stability", "sweep_from_kernels", "train", "validate",
    "ValidationResult",
]
