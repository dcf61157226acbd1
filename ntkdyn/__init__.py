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
RandomNetworkTrajectory         one random network (predict's default, analytic kernel):
                                expected losses and bands over sampled initialisations
algorithms                      dgd, atc, cta, gd, p2pl(L, C), gradient_tracking (ATC-DIGing),
                                next, diging, extra, momentum(beta): schedules of mix and adapt
graphs                          topologies, mixing matrices; periodic and random sequences
train.train                     real peer-to-peer training (vmapped agents, jitted steps)
validate                        trained vs predicted trajectories, agreement, overlay figures
initialisation                  outputs over random initialisations (mean network vs one
                                random network), exact for small problems
lowrank                         low-rank kernel path for data-set scale (nd.predict(rank=...))
width_for, finite_width         finite-width band (nd.predict(width=n)); how wide is wide enough
"""

import importlib as _importlib

from ntkdyn._utils import precision as _precision  # noqa: F401  (enables float64 in JAX)

#: subpackages and modules reachable as attributes (``ntkdyn.graphs``, ...), imported on
#: first use; ``train`` is the training subpackage (``nd.train.train``)
_SUBMODULES = {
    "activations": "activations", "algorithms": "algorithms", "config": "config",
    "data": "data", "dynamics": "dynamics", "finite_width": "finite_width", "graphs": "graphs",
    "initialisation": "initialisation", "kernels": "kernels", "lowrank": "lowrank",
    "models": "models", "plotting": "plotting", "train": "training", "training": "training",
    "trajectory": "trajectory", "validation": "validation",
}
#: public names -> defining module, imported on first use (``import ntkdyn`` costs about
#: ``import jax``: networkx, scipy.sparse / optimize / stats, sklearn, matplotlib and tqdm
#: load only when a command needs them)
_LAZY = {
    "Algorithm": "algorithms", "CheckReport": "preflight", "check": "preflight",
    "ValidationResult": "validation.harness", "validate": "validation.harness",
    "build_problem": "prediction", "fixed_point": "prediction", "init_params": "models",
    "predict": "prediction", "predict_sweep": "prediction", "stability": "prediction",
    "predict_from_kernels": "prediction", "sweep_from_kernels": "prediction",
    "KernelProblem": "dynamics.problem", "make_problem": "dynamics.problem",
    "StabilityReport": "dynamics.stability", "FixedPoint": "dynamics.steady_state",
    "GossipTrajectory": "trajectory", "Trajectory": "trajectory",
    "RandomNetworkTrajectory": "trajectory",
    "WidthEstimate": "finite_width", "width_for": "finite_width",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = _importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    elif name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "Algorithm", "CheckReport", "FixedPoint", "GossipTrajectory", "KernelProblem",
    "RandomNetworkTrajectory", "StabilityReport", "Trajectory", "ValidationResult",
    "WidthEstimate", "width_for",
    "activations", "algorithms",
    "build_problem", "check", "config", "data", "dynamics", "finite_width", "fixed_point",
    "graphs",
    "init_params", "initialisation", "kernels", "lowrank", "make_problem", "models",
    "plotting", "predict", "predict_from_kernels", "predict_sweep", "stability",
    "sweep_from_kernels", "train", "training", "trajectory", "validate", "validation",
]
